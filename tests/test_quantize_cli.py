"""Bad input to `compress quantize`: one line on stderr, exit 2, and nothing that looks complete."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from compress.tiny import save_tiny

FAST = ("--samples", "4", "--seq-len", "32", "--eval-tokens", "64")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors run on one thread


def _assert_refused(rc: int, err: str, out: Path, pattern: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.fixture(scope="module")
def wide_mlp_dir(tmp_path_factory) -> Path:
    """Tiny Llama whose MLP is 192 wide: group 64 fits down_proj (192) but not the 96-wide inputs."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "wide", "llama", intermediate_size=192)


def test_group_size_misfits_are_all_listed_before_calibration(run_cli, wide_mlp_dir, tmp_path, monkeypatch):
    import compress.quantize.calibrate as cal

    def no_calibration(*a, **k):
        raise AssertionError("calibration started before the group-size check")

    monkeypatch.setattr(cal, "capture", no_calibration)
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", wide_mlp_dir, "--scheme", "int4-gptq", "--group-size", "64", *FAST, "--out", out)
    _assert_refused(rc, err, out, r"group size 64 does not divide the input width of 12 layer\(s\)")
    for sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj"):
        assert f"model.layers.[0-1].{sub} (96)" in err
    assert "down_proj" not in err
    assert "--group-size 32" in err and "--skip-incompatible" in err


def test_skip_incompatible_leaves_those_layers_in_float_and_says_why(run_cli, wide_mlp_dir, tmp_path):
    import json

    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", wide_mlp_dir, "--scheme", "int4-rtn", "--group-size", "64",
                         "--skip-incompatible", "--eval-tokens", "64", "--out", out)
    assert rc == 0, err
    q = json.loads((out / "quantization.json").read_text())
    assert sorted(q["layers"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert len(q["skipped"]) == 12
    assert q["skipped"]["model.layers.0.self_attn.q_proj"] == "group size 64 does not divide its input width 96"


def test_short_calibration_text_says_tokens_found_and_needed(run_cli, tiny_llama_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Call me Ishmael. " * 3)
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-awq", "--group-size", "32", "--calib", text,
                         "--samples", "4", "--seq-len", "64", "--out", out)
    _assert_refused(rc, err, out, r"calibration text too short: \d+ tokens found, 256 needed \(4 samples x 64")


def test_nan_weight_is_named(run_cli, tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-model"
    shutil.copytree(tiny_llama_dir, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    tensors["model.layers.0.self_attn.k_proj.weight"][0, 0] = float("inf")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", bad, "--scheme", "int8", "--out", out)
    _assert_refused(rc, err, out, r"non-finite weights in 2 tensor")
    assert "model.layers.1.mlp.up_proj.weight (1 NaN, 0 inf)" in err
    assert "model.layers.0.self_attn.k_proj.weight (0 NaN, 1 inf)" in err


def test_ctrl_c_mid_calibration_leaves_no_artifact(run_cli, tiny_llama_dir, tmp_path, monkeypatch):
    import compress.quantize.calibrate as cal

    out = tmp_path / "q"
    real = cal.collect_stats
    seen_tmp: list[Path] = []

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        seen_tmp.extend(out.parent.glob(f".{out.name}.tmp-*"))  # the artifact is being built
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of layer-by-layer calibration

    monkeypatch.setattr(cal, "collect_stats", interrupted)
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-gptq", "--group-size", "32", *FAST,
                         "--out", out)
    assert rc == 130, err
    assert seen_tmp, "the interrupt was not injected while the artifact was being written"
    assert not out.exists()
    assert not list(tmp_path.glob(".q.tmp-*"))


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    from compress.quantize import QuantConfig, run_quantize

    out = tmp_path_factory.mktemp("q") / "int8"
    return run_quantize(str(tiny_llama_dir), QuantConfig(scheme="int8", eval_tokens=0), out)


def test_already_quantized_input_is_refused(run_cli, quantized_dir, tmp_path):
    out = tmp_path / "again"
    rc, _, err = run_cli("quantize", quantized_dir, "--scheme", "int4-rtn", "--group-size", "32", "--out", out)
    _assert_refused(rc, err, out, r"already quantized")


def test_already_quantized_model_object_is_refused(quantized_dir):
    from compress.errors import ModelLoadError
    from compress.models import load_model
    from compress.quantize import QuantConfig, quantize_

    lm = load_model(quantized_dir)
    with pytest.raises(ModelLoadError, match="already quantized by compress"):
        quantize_(lm.model, QuantConfig(scheme="int4-rtn", group_size=32))


def test_tied_embeddings_need_one_choice(run_cli, tiny_gemma3_dir, tmp_path):
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", tiny_gemma3_dir, "--scheme", "int8", "--embeddings", "int8", "--lm-head", "keep",
                         "--out", out)
    _assert_refused(rc, err, out, r"lm_head: tied to model.embed_tokens .* must match")


def test_tied_lm_head_left_auto_follows_the_embeddings_choice(tiny_gemma3_dir):
    from compress.models import load_model
    from compress.quantize import QuantConfig
    from compress.quantize.layers import make_plan

    plan = make_plan(load_model(tiny_gemma3_dir).model, QuantConfig(scheme="int8", embeddings="int8"))
    assert plan.tied and plan.targets["model.embed_tokens"].grid.bits == 8


def test_unknown_scheme_suggests_the_closest(run_cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-gtpq", "--out", out)
    _assert_refused(rc, err, out, r"quantize.scheme: 'int4-gtpq' is not one of .*did you mean 'int4-gptq'")


def test_existing_output_needs_force(run_cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int8", "--out", out)
    assert rc == 2 and "use --force" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_budget_below_int4_floor_is_refused(run_cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-rtn", "--group-size", "32",
                         "--budget-bits", "4.2", *FAST, "--out", out)
    _assert_refused(rc, err, out, r"budget_bits: 4.2 is below the 4.500 bits/weight")


def test_saved_config_reproduces_the_same_work(run_cli, tiny_llama_dir, tmp_path):
    from compress.manifest import read_manifest

    recipe = tmp_path / "q.yaml"
    rc, out_text, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-rtn", "--group-size", "32",
                                "--eval-tokens", "0", "--save-config", recipe, "--dry-run")
    assert rc == 0, err
    assert "model.layers.1.mlp.down_proj" in out_text  # the plan is printed
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("quantize", tiny_llama_dir, "--scheme", "int4-rtn", "--group-size", "32", "--eval-tokens", "0",
                   "--out", a)[0] == 0
    assert run_cli("quantize", tiny_llama_dir, "--config", recipe, "--out", b)[0] == 0
    assert read_manifest(a).content_id == read_manifest(b).content_id
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_analyze_prints_a_sensitivity_row_per_layer(run_cli, tiny_llama_dir, tmp_path):
    rc, out_text, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-rtn", "--group-size", "32", "--analyze",
                                *FAST, "--out", tmp_path / "q")
    assert rc == 0, err
    assert "sensitivity" in out_text
    for i in (0, 1):
        for sub in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            assert re.search(rf"model\.layers\.{i}\.\S*{sub}", out_text), (i, sub)


def test_compact_names_lists_every_layer():
    from compress.quantize.layers import compact_names

    names = [(f"model.layers.{i}.mlp.up_proj", 576) for i in (0, 1, 2, 5, 7, 8)] + [("lm_head", 576)]
    assert compact_names(names) == "lm_head (576), model.layers.[0-2,5,7-8].mlp.up_proj (576)"
