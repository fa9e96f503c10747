"""Bad input to the ONNX export: one line on stderr, exit code 2, and nothing that looks finished; a graph
that disagrees with PyTorch is caught; the config round-trips; the runtime refuses what it cannot run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import pytest
from test_export_onnx_helpers import peaked, rtn_artifact

from compress.errors import ArtifactError, ConfigError, ExportMismatchError, MissingBackendError
from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx


def _nothing_left(out):
    """Neither the output directory nor a temporary sibling of it exists."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def _one_line_error(rc, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, run_cli):
    src = shutil.copytree(peaked("llama"), tmp_path / "olmo2")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="olmo2", architectures=["Olmo2ForCausalLM"])
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    rc, _, err = run_cli("export", src, "--format", "onnx", "--qtype", "fp32", "--out", out)
    _one_line_error(rc, err, "Olmo2ForCausalLM", "supported: llama (LlamaForCausalLM), mistral (MistralForCausalLM)")
    assert _nothing_left(out)


def test_head_dim_that_group_query_attention_cannot_run_is_refused(tiny_llama_dir, tmp_path, run_cli):
    out = tmp_path / "out"  # the shared tiny Llama has head_dim 24
    rc, _, err = run_cli("export", tiny_llama_dir, "--format", "onnx", "--out", out)
    _one_line_error(rc, err, "head_dim: 24", "multiple of 16")
    assert _nothing_left(out)


def test_non_empty_output_directory_is_refused_and_force_replaces_only_our_artifacts(tmp_path, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--out", out)
    _one_line_error(rc, err, "not empty", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--out", out, "--force")
    _one_line_error(rc, err, "not a compress artifact")  # --force never replaces what we did not write
    assert (out / "keep.txt").read_text() == "mine"
    other = tmp_path / "ours"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--qtype", "fp16", "--out", other)
    assert rc == 0, err
    rc, stdout, err = run_cli("export", peaked("llama"), "--format", "onnx", "--out", other, "--force")
    assert rc == 0, err
    assert read_manifest(other).report["precision"] == "fp32"
    assert "onnxruntime vs PyTorch" in stdout


@pytest.mark.parametrize("qtype", ["int3", "Q4_0"])
def test_unknown_precision_lists_the_precisions(qtype, tmp_path, run_cli):
    out = tmp_path / "out"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--qtype", qtype, "--out", out)
    _one_line_error(rc, err, repr(qtype), "fp32, fp16, int8, int4")
    assert _nothing_left(out)


def test_gguf_only_option_is_refused_for_onnx(tmp_path, run_cli):
    out = tmp_path / "out"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--imatrix-tokens", "64", "--out", out)
    _one_line_error(rc, err, "--imatrix-tokens", "--format onnx")


def test_corrupt_input_artifact_is_named(tmp_path, run_cli):
    art = rtn_artifact(peaked("llama"), tmp_path / "q4")
    f = art / "model.safetensors"
    os.truncate(f, f.stat().st_size - 100)
    out = tmp_path / "out"
    rc, _, err = run_cli("export", art, "--format", "onnx", "--qtype", "int4", "--out", out)
    _one_line_error(rc, err, "model.safetensors", "corrupt artifact")
    assert _nothing_left(out)


def test_integers_of_the_wrong_dtype_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    art = rtn_artifact(peaked("llama"), tmp_path / "q4")
    f = art / "model.safetensors"
    raw = load_file(str(f))
    name = "model.layers.0.mlp.up_proj.scales"
    raw[name] = raw[name].astype("float32")
    save_file(raw, str(f))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = f.stat().st_size  # a consistent but wrong artifact
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="up_proj.scales: F32 .* expected F16"):
        export_onnx(art, OnnxConfig(precision="int4"), tmp_path / "out")
    assert _nothing_left(tmp_path / "out")


def test_int8_precision_refuses_to_re_round_an_int4_artifact(tmp_path):
    art = rtn_artifact(peaked("llama"), tmp_path / "q4")
    with pytest.raises(ConfigError, match="int8 would round the artifact's calibrated integers again: 14 layers hold "
                                          "int4 .*--qtype auto carries .*--requantize"):
        export_onnx(art, OnnxConfig(precision="int8"), tmp_path / "out")
    assert _nothing_left(tmp_path / "out")


def test_exception_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import export.onnx.export as mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "validate_onnx", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(peaked("llama"), OnnxConfig(), out)
    assert _nothing_left(out)


def test_a_wrong_sliding_window_is_caught_as_a_mismatch(tmp_path, monkeypatch):
    from export.onnx import arch

    wrong = dataclasses.replace(arch.ARCHS["gemma3_text"],
                                window=lambda c, i: c.sliding_window + 1 if c.layer_types[i] == "sliding_attention"
                                else -1)
    monkeypatch.setitem(arch.ARCHS, "gemma3_text", wrong)
    out = tmp_path / "out"
    with pytest.raises(ExportMismatchError, match=r"output 'logits' \(prefill\).*worst position \d+ \(token id \d+"):
        export_onnx(peaked("gemma3"), OnnxConfig(), out)
    assert _nothing_left(out)


def test_missing_gemma_norm_offset_is_caught_as_a_mismatch(tmp_path, monkeypatch):
    from export.onnx import arch

    monkeypatch.setitem(arch.ARCHS, "gemma3_text", dataclasses.replace(arch.ARCHS["gemma3_text"], norm_offset=0.0))
    with pytest.raises(ExportMismatchError, match="disagrees with PyTorch"):
        export_onnx(peaked("gemma3"), OnnxConfig(), tmp_path / "out")


def test_same_export_twice_is_reused(tmp_path):
    out = tmp_path / "out"
    export_onnx(peaked("llama"), OnnxConfig(), out)
    first = read_manifest(out).created
    export_onnx(peaked("llama"), OnnxConfig(), out)
    assert read_manifest(out).created == first


def test_config_round_trips_and_rejects_bad_values():
    cfg = OnnxConfig(precision="int4", accuracy_level=0, lm_head="int8", block_size=64, ort_format=True)
    assert OnnxConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="block_size: 48"):
        OnnxConfig(block_size=48)
    with pytest.raises(ConfigError, match="accuracy_level: 5"):
        OnnxConfig(accuracy_level=5)
    with pytest.raises(ConfigError, match="lm_head: 'int2' is not one of: auto, float, int8, int4"):
        OnnxConfig(lm_head="int2")
    with pytest.raises(ConfigError, match="unknown key 'precison'.*did you mean 'precision'"):
        OnnxConfig.from_dict({"precison": "fp32"})


def test_runtime_refuses_an_artifact_that_is_not_an_onnx_export(tmp_path):
    from runtimes import DeviceProfile, get_runtime

    art = rtn_artifact(peaked("llama"), tmp_path / "q4")
    with pytest.raises(ArtifactError, match="'quantize' artifact, not an ONNX export"):
        get_runtime("onnxruntime").load(art, DeviceProfile())


def test_runtime_without_onnxruntime_names_the_install_command(tmp_path, monkeypatch):
    from runtimes import DeviceProfile, get_runtime

    out = tmp_path / "out"
    export_onnx(peaked("llama"), OnnxConfig(), out)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingBackendError, match="pip install onnxruntime"):
        get_runtime("onnxruntime").load(out, DeviceProfile())


def test_ort_format_is_written_and_validated(tmp_path):
    from runtimes import DeviceProfile, get_runtime

    out = tmp_path / "out"
    export_onnx(peaked("llama"), OnnxConfig(precision="int4", ort_format=True), out)
    r = read_manifest(out).report
    assert (out / "model.ort").is_file() and r["ort_file"] == "model.ort"
    assert r["ort_validation"]["kv_cache"]["top1_agreement"] >= r["ort_validation"]["tolerance"]["min_top1"]
    rt = get_runtime("onnxruntime")
    rt.load(out, DeviceProfile(threads=1), model_file="model.ort")
    assert len(rt.generate([5, 6, 7], 4).new_ids) == 4


def test_dry_run_prints_the_plan_writes_nothing_and_saves_the_config(tmp_path, run_cli):
    import yaml

    out, saved = tmp_path / "out", tmp_path / "onnx.yaml"
    art = rtn_artifact(peaked("llama"), tmp_path / "q4")
    rc, stdout, err = run_cli("export", art, "--format", "onnx", "--qtype", "int4", "--lm-head", "float",
                              "--accuracy-level", "0", "--out", out, "--dry-run", "--save-config", saved)
    assert rc == 0, err
    assert '"nbits-int4": 14' in stdout and "llama, 2 layers" in stdout
    assert "14 x int4 g32 -> MatMulNBits bits 4 block 32" in stdout  # how each layer would be carried
    assert _nothing_left(out)
    cfg = OnnxConfig.from_dict(yaml.safe_load(saved.read_text()))
    assert cfg == OnnxConfig(precision="int4", lm_head="float", accuracy_level=0)
    rc, _, err = run_cli("export", art, "--format", "onnx", "--config", saved, "--out", out)
    assert rc == 0, err
    assert OnnxConfig.from_dict(read_manifest(out).config) == cfg


def test_runtime_refuses_a_sequence_longer_than_the_export_covers(tmp_path):
    from runtimes import DeviceProfile, get_runtime

    out = tmp_path / "out"
    export_onnx(peaked("llama"), OnnxConfig(max_length=80), out)
    assert read_manifest(out).report["max_length"] == 80
    rt = get_runtime("onnxruntime")
    rt.load(out, DeviceProfile(threads=1))
    assert len(rt.generate(list(range(5, 75)), 10).new_ids) == 10  # 80 positions exactly
    with pytest.raises(ConfigError, match="81 tokens is longer than this ONNX export runs \\(80\\)"):
        rt.generate(list(range(5, 75)), 12)


def test_kv_dtype_option_reaches_the_config_and_int8_is_refused_by_it(tmp_path, run_cli):
    import yaml

    out, saved = tmp_path / "out", tmp_path / "onnx.yaml"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--kv-dtype", "float16", "--out", out,
                         "--dry-run", "--save-config", saved)
    assert rc == 0, err
    assert OnnxConfig.from_dict(yaml.safe_load(saved.read_text())).kv_dtype == "float16"
    rc, _, err = run_cli("export", peaked("llama"), "--format", "onnx", "--kv-dtype", "int8", "--out", out)
    _one_line_error(rc, err, "export-onnx.kv_dtype: 'int8'", "float32, float16")
    assert _nothing_left(out)
