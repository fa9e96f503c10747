"""A recipe step the model's widths cannot take is refused from config.json, before any heavy work: one
``error:`` line naming the step and what it asked for, exit code 2, by ``--dry-run`` and by the run itself.

The model is the tiny Phi-3 (hidden 96, MLP 160): a group size of 64 does not divide it, and no row of it is
whole 256-wide k-quant super-blocks, so llama.cpp would write a "Q4_K_M" file without a single Q4_K in it."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from compress.tiny import save_family


def _folder(tmp_path, **overrides):
    return save_family(tmp_path / "phi3", "phi3", **overrides)


def _recipe(tmp_path, folder, **steps):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": str(folder), "work_dir": str(tmp_path / "work"), **steps}))
    return path


def _one_error(rc, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


KQUANT = {"export": [{"name": "g", "format": "gguf", "qtype": "Q4_K_M"}]}
KQUANT_AFTER_QUANTIZE = {
    "quantize": [{"name": "q", "scheme": "int4-rtn", "group_size": 32, "eval_tokens": 0}],
    "export": [{"name": "g", "format": "gguf", "from": "q", "qtype": "Q4_K_M", "requantize": True}]}


@pytest.mark.parametrize("steps", [KQUANT, KQUANT_AFTER_QUANTIZE], ids=["from-model", "after-quantize"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_kquant_no_row_of_the_model_can_hold_is_refused_before_any_work(steps, dry, tmp_path, run_cli):
    recipe = _recipe(tmp_path, _folder(tmp_path), **steps)
    t0 = time.perf_counter()
    rc, _, err = run_cli("run", recipe, *(["--dry-run"] if dry else []))
    took = time.perf_counter() - t0
    line = _one_error(rc, err)
    assert line.startswith("error: export g: export-gguf.qtype: Q4_K_M needs rows of whole 256-wide super-blocks"), line
    assert "hidden_size 96" in line and "intermediate_size 160" in line and "Q5_0 and Q8_0" in line, line
    assert line.endswith("--qtype Q4_0 (recipe: qtype: Q4_0 in the export entry)"), line  # both spellings
    assert took < 2.0, f"refusal took {took:.2f} s"
    assert not any((tmp_path / "work").glob("*/manifest.json"))  # the quantize step did not run either


def test_a_kquant_some_rows_hold_says_which_fall_back(tmp_path, run_cli):
    # hidden 256 and 4 heads of 64 hold super-blocks; the MLP's 160 does not
    folder = _folder(tmp_path, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    rc, out, err = run_cli("run", _recipe(tmp_path, folder, **KQUANT), "--dry-run")
    assert rc == 0, err
    assert "Q4_K_M, architecture phi3; intermediate_size 160 not a multiple of 256: those rows fall back to Q5_0 " \
           "and Q8_0" in " ".join(out.split()), out


def test_the_export_command_refuses_the_same_kquant_from_the_tensor_headers(tmp_path, run_cli):
    folder = _folder(tmp_path)
    rc, _, err = run_cli("export", folder, "--format", "gguf", "--qtype", "Q4_K_M", "--out", tmp_path / "g")
    line = _one_error(rc, err)
    assert "export-gguf.qtype: Q4_K_M needs rows of whole 256-wide super-blocks" in line, line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_group_size_that_does_not_divide_the_width_is_refused_naming_the_step_and_layers(dry, tmp_path, run_cli):
    steps = {"quantize": [{"name": "q", "scheme": "int4-rtn", "group_size": 64, "eval_tokens": 0}]}
    recipe = _recipe(tmp_path, _folder(tmp_path), **steps)
    t0 = time.perf_counter()
    rc, _, err = run_cli("run", recipe, *(["--dry-run"] if dry else []))
    took = time.perf_counter() - t0
    line = _one_error(rc, err)
    assert line.startswith("error: quantize q: group size 64 does not divide the input width of"), line
    assert "self_attn.qkv_proj (96)" in line and "mlp.down_proj (160)" in line and "--group-size 32" in line, line
    # a recipe user needs the field names too, not only the flags
    assert line.endswith("use --group-size 32 (recipe: quantize.group_size: 32) or --skip-incompatible (recipe: "
                         "quantize.skip_incompatible: true) to leave them in float"), line
    assert took < 5.0, f"refusal took {took:.2f} s"  # a meta-device model from config.json: no weights
    assert not (tmp_path / "work" / "quantize-q").exists()


def test_the_widths_read_are_config_fields_of_every_family(tmp_path):
    """config_row_widths reads the fields every family's config.json has (head_dim where it is not
    hidden/heads, as Qwen3 and Gemma 3 have it)."""
    from compress.tiny import family_model
    from export.gguf.kquant import config_row_widths

    for name, head_dim in (("qwen3", 32), ("gemma3", 32), ("llama", 16)):
        cfg = json.loads(family_model(name).config.to_json_string())
        widths = config_row_widths(cfg)
        assert widths["hidden_size"] == cfg["hidden_size"]
        assert widths["num_attention_heads x head_dim"] == cfg["num_attention_heads"] * head_dim
        assert widths["intermediate_size"] == cfg["intermediate_size"]
