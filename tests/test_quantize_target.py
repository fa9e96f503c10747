"""The bit menu matches the formats: 5-bit and asymmetric grids through the reader, --target's limits,
the budget's cost model and choice of 5 bits, --dry-run's per-layer formats, version-1 configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.models import load_model
from compress.quantize import QuantConfig
from compress.quantize import targets as tg
from compress.quantize.format import open_quantized
from compress.quantize.grid import Grid
from compress.quantize.layers import Plan, Target
from compress.quantize.sensitivity import allocate
from compress.tiny import save_tiny

FAST = ("--samples", "4", "--seq-len", "32", "--eval-tokens", "64")

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_dequantize(raw: dict[str, np.ndarray], name: str, meta: dict) -> np.ndarray:
    """FORMAT.md's dequantization from the spec alone (int4 nibbles, int5/int8 bytes, implicit zeros 8/16/0)."""
    qw = raw[f"{name}.qweight"]
    if meta["bits"] == 4:
        q = np.empty((qw.shape[0], qw.shape[1] * 2), dtype=np.float64)
        q[:, 0::2], q[:, 1::2] = qw & 0x0F, qw >> 4
    else:
        q = qw.astype(np.float64)
    g = meta["group_size"]
    if meta["symmetric"]:
        zero = {4: 8.0, 5: 16.0, 8: 0.0}[meta["bits"]]
    else:
        zero = np.repeat(raw[f"{name}.zeros"].astype(np.float64), g, axis=1)
    return ((q - zero) * np.repeat(raw[f"{name}.scales"].astype(np.float64), g, axis=1)).astype(np.float32)


@pytest.mark.parametrize("scheme,extra", [
    ("int5-gptq", []),
    ("int5-awq", ["--asymmetric"]),
    ("int5-rtn", ["--asymmetric", "--embeddings", "int5", "--lm-head", "int8"]),
    ("int4-gptq", ["--asymmetric"]),
    ("int8", ["--asymmetric"]),
])
def test_5_bit_and_asymmetric_artifacts_read_back_exactly_as_the_runtime_weights(run_cli, tiny_llama_dir, tmp_path,
                                                                                 scheme, extra):
    from safetensors.numpy import load_file

    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", tiny_llama_dir, "--scheme", scheme, "--group-size", "32", *FAST, *extra,
                         "--out", out)
    assert rc == 0, err
    info = json.loads((out / "quantization.json").read_text())
    assert info["format_version"] == 2
    raw = load_file(str(out / "model.safetensors"))
    qf = open_quantized(out)
    weights = dict(load_model(out).model.named_parameters())
    bits = {m["bits"] for m in info["layers"].values()}
    assert int(scheme[3]) in bits
    for name, meta in info["layers"].items():
        ref = reference_dequantize(raw, name, meta)
        assert np.array_equal(qf.quantized(name).dequantize(), ref), name
        assert np.array_equal(weights[f"{name}.weight"].detach().numpy(), ref), name
        assert meta["symmetric"] == ("--asymmetric" not in extra), name
        if meta["bits"] == 5:
            assert raw[f"{name}.qweight"].dtype == np.uint8 and int(raw[f"{name}.qweight"].max()) <= 31


def _plan(layers: dict[str, tuple[int, int]], group: int = 32) -> Plan:
    targets = {}
    for i, (name, (out_f, in_f)) in enumerate(layers.items()):
        targets[name] = Target(name, nn.Linear(in_f, out_f, bias=False), "linear", i, Grid(4, group, True), "gptq",
                               choose=True)
    return Plan(targets, {}, False, "emb", "lm_head")


def test_budget_chooses_5_bits_where_they_buy_more_than_8_per_byte():
    plan = _plan({"a": (64, 64), "b": (64, 64)})
    table = {n: {"params": 64 * 64, "kl_int4": 1.0, "kl_int5": 0.25, "kl_int8": 0.004} for n in plan.targets}
    # one extra bit per weight on average: both layers at 5 bits (KL 0.5) beat one at 8 (KL 1.004)
    cfg = QuantConfig(scheme="int4-gptq", group_size=32, budget_bits=5.5, budget_tables=False)
    assert allocate(plan, table, cfg) == {"a": 5, "b": 5}
    # the version-1 menu (no 5 bits) can only lift a layer at a time to 8 bits
    v1 = QuantConfig(scheme="int4-gptq", group_size=32, budget_bits=6.5, budget_menu=(4, 8, 16), budget_tables=False)
    assert sorted(allocate(plan, table, v1).values()) == [4, 8]
    # in ONNX 5-bit rides in 8-bit storage: it costs as much as 8 bits there, so the budget never picks it
    onnx = QuantConfig(scheme="int4-gptq", budget_bits=8.0, target="onnx", budget_tables=False)
    assert 5 not in allocate(plan, table, onnx).values()


def test_a_width_the_target_makes_no_cheaper_than_a_wider_one_leaves_the_menu():
    """int5 costs more than int8 in MatMulNBits: an ONNX (or both) budget never picks it, so its
    sensitivity is not measured (half the analysis time); GGUF's Q5_0 is cheaper than Q8_0 and stays."""
    def menu(target):
        return QuantConfig(scheme="int4-gptq", budget_bits=5.5, target=target).menu
    assert menu(None) == menu("gguf") == (4, 5, 8, 16)
    assert menu("onnx") == menu("both") == (4, 8, 16)
    assert QuantConfig(scheme="int5-gptq", budget_bits=6, target="onnx").menu == (5, 8, 16)  # the scheme's own stays
    assert QuantConfig(scheme="int4-gptq", budget_bits=5.5, target="onnx", budget_menu=(4, 5, 8)).menu == (4, 5, 8)


def test_budget_counts_each_format_s_own_sizes():
    assert tg.cost_bits("gguf", 4, 64, True, 576) == 4.5  # Q4_0, the g64 scale repeated per 32-block
    assert tg.cost_bits("gguf", 5, 32, False, 576) == 6.0  # Q5_1: fp16 d and m per 32 values
    assert tg.cost_bits(None, 5, 32, False, 576) == 5 + 24 / 32  # the artifact's grid: fp16 scale + uint8 zero
    assert tg.cost_bits("onnx", 5, 32, True, 576) == 8 + 32 / 32 + 8 / 32  # 8-bit storage with zero points
    # export-onnx scale_type auto: float16 scales on 4-bit nodes (int4 g32 is Q4_0's 4.5 bits), float32 on 8-bit
    assert tg.cost_bits("onnx", 4, 32, True, 576) == 4.5 and tg.cost_bits("onnx", 8, 32, True, 576) == 9.0
    assert tg.cost_bits("both", 5, 32, True, 576) == tg.cost_bits("onnx", 5, 32, True, 576)
    # a layer the budget keeps in float: F16 in GGUF, a float32 MatMul in ONNX (what the export writes)
    assert tg.cost_bits("gguf", 16, 32, True, 576) == 16.0 and tg.cost_bits("onnx", 16, 32, True, 576) == 32.0
    assert tg.onnx_nbits(4, 0, True, 576) == (4, 64)  # per channel 576 -> nine 64-blocks
    assert tg.gguf_type(8, 0, True, 1536) == "Q8_0" and tg.gguf_type(8, 0, True, 80) is None


def test_target_gguf_refuses_group_16_and_asymmetric_int8(tmp_path):
    with pytest.raises(ConfigError, match="group_size: 16 with --target gguf: GGUF blocks hold 32 values"):
        QuantConfig(scheme="int4-gptq", group_size=16, target="gguf")
    with pytest.raises(ConfigError, match="carries int8 only as GGUF Q8_0"):
        QuantConfig(scheme="int8", symmetric=False, target="both")
    QuantConfig(scheme="int4-gptq", group_size=16, target="onnx")  # a MatMulNBits block of 16 is fine
    # asymmetric 4/5-bit stays asymmetric (Q4_1/Q5_1), but the budget's 8-bit entry is Q8_0
    cfg = QuantConfig(scheme="int4-gptq", symmetric=False, target="gguf", budget_bits=6.0)
    assert cfg.effective_group_size == 32 and not cfg.grid_symmetric(4) and cfg.grid_symmetric(8)
    assert QuantConfig(scheme="int4-gptq").effective_group_size == 128  # no target: as before


def test_target_gguf_lists_per_channel_widths_that_are_not_whole_blocks(run_cli, tmp_path, monkeypatch):
    import compress.quantize.calibrate as cal

    monkeypatch.setattr(cal, "capture", lambda *a, **k: (_ for _ in ()).throw(AssertionError("calibrated")))
    src = save_tiny(tmp_path / "m", "llama", intermediate_size=80)  # down_proj reads 80 = 2.5 blocks
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", "int8", "--target", "gguf", "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "GGUF blocks hold 32 values" in err and "model.layers.[0-1].mlp.down_proj (80)" in err
    assert "q_proj" not in err and not out.exists()


def test_dry_run_says_what_each_layer_becomes_in_each_format(run_cli, tiny_llama_dir, monkeypatch):
    import compress.quantize.calibrate as cal

    def no_calibration(*a, **k):
        raise AssertionError("the dry run calibrated")

    monkeypatch.setattr(cal, "capture", no_calibration)
    rc, out, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int4-gptq", "--budget-bits", "5.5", "--target",
                           "gguf", *FAST, "--dry-run", "--json")
    assert rc == 0, err
    rows = {r["tensor"]: r for r in json.loads(out)}
    down = rows["model.layers.1.mlp.down_proj"]
    assert down["bits"] == [4, 5, 8, 16] and down["group"] == 32 and down["budget"]
    assert down["gguf"] == ["Q4_0", "Q5_0", "Q8_0", "F16"]
    assert down["onnx"] == ["4b/32", "8b/32", "8b/32", "float"]
    assert rows["model.embed_tokens"]["budget"] and rows["lm_head"]["budget"]  # the tables are in the menu
    rc, out, err = run_cli("quantize", tiny_llama_dir, "--scheme", "int5-rtn", "--asymmetric", "--group-size", "32",
                           "--dry-run", "--json")
    assert rc == 0, err
    rows = {r["tensor"]: r for r in json.loads(out)}
    assert rows["model.layers.0.self_attn.q_proj"]["gguf"] == ["Q5_1"]
    assert rows["model.layers.0.self_attn.q_proj"]["onnx"] == ["8b/32"]
    assert rows["lm_head"]["gguf"] == ["F16"] and rows["lm_head"]["bits"] == [16]  # kept: no budget


def test_version_1_configs_keep_their_meaning():
    old = {"type": "quantize", "version": 1, "scheme": "int4-gptq", "group_size": 64, "budget_bits": 5.5}
    cfg = QuantConfig.from_dict(old)
    assert cfg.version == 2 and cfg.menu == (4, 8, 16) and not cfg.budget_tables
    assert cfg.embeddings == "keep" and cfg.lm_head == "keep" and cfg.target is None
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_the_issue_command_makes_a_gguf_exact_mix_within_budget(tiny_llama_dir, tmp_path):
    from compress.manifest import read_manifest
    from compress.quantize import run_quantize

    cfg = QuantConfig(scheme="int4-gptq", budget_bits=5.5, target="gguf", samples=4, seq_len=32, eval_tokens=64,
                      analyze_tokens=32)
    out = run_quantize(str(tiny_llama_dir), cfg, tmp_path / "q")
    r = read_manifest(out).report
    info = json.loads((out / "quantization.json").read_text())
    assert info["target"] == "gguf"
    assert r["budget"]["bits_per_weight"] <= 5.5 and r["budget"]["counted_in"] == "gguf"
    assert "re-rounded" not in r["formats"]["gguf"]["tensors"]
    for name, meta in info["layers"].items():
        assert meta["group_size"] == 32 and meta["symmetric"]
        assert tg.gguf_type(meta["bits"], meta["group_size"], meta["symmetric"], meta["shape"][1]), name
    assert set(r["budget"]["choice"]) >= {"model.embed_tokens", "lm_head"}
    qf = open_quantized(out)
    assert all(qw.dequantize().shape == qw.shape for qw in qf.quantized_weights())


def test_the_budget_is_not_spent_on_upgrades_that_measurably_buy_nothing():
    # every layer at 5 bits already removes the measurable loss; 8 and 16 bits would buy ~1e-9 each
    plan = _plan({"a": (64, 64), "b": (64, 64)})
    table = {n: {"params": 64 * 64, "kl_int4": 1.0, "kl_int5": 1e-9, "kl_int8": 1e-12} for n in plan.targets}
    cfg = QuantConfig(scheme="int4-gptq", group_size=32, budget_bits=16.0, budget_tables=False)
    assert allocate(plan, table, cfg) == {"a": 5, "b": 5}  # the rest of the 16-bit budget stays unspent
    # a gain above the floor is still bought
    table["b"]["kl_int8"] = 0.0
    table["b"]["kl_int5"] = 1e-3
    assert allocate(plan, table, cfg) == {"a": 5, "b": 8}
