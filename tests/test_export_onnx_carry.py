"""Every quantized artifact goes into ONNX exactly (issue 12): each layer's integers in the MatMulNBits that
holds them (int4 -> 4 bits; int8 and 5-bit -> 8 bits with zero points), read back from the file and
compared with the artifact's own; float-kept layers stay float; a precision that would round the
integers again is refused unless --requantize; the accuracy level of every node is measured and recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_export_onnx_helpers import grid_artifact, grid_integers, peaked

from compress.errors import ConfigError
from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx
from export.onnx.levels import Measure, choose_levels, node_kind

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny Llama whose widths take groups of 64 and 128 (hidden 128, MLP 256, 8 heads of 16)
WIDE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 8}


def _wide():
    return peaked("llama", **WIDE)


def _load(path):
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    wmap = json.loads({p.key: p.value for p in m.metadata_props}["compress.weight_map"])
    return m, inits, nodes, wmap


def _attr(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _read_back(inits, node, rows):
    """(integers [rows, K], scales [rows, k_blocks], zero points [rows, k_blocks] or None) of a MatMulNBits
    node, unpacked from its initializers without the export's own helpers."""
    n, k, bits, block = (_attr(node, a) for a in ("N", "K", "bits", "block_size"))
    b = inits[node.input[1]].reshape(n, -1)
    if bits == 4:
        q = np.empty((n, b.shape[1] * 2), np.int16)
        q[:, 0::2], q[:, 1::2] = b & 0x0F, b >> 4
    else:
        q = b.astype(np.int16)
    blocks = k // block
    scales = inits[node.input[2]].reshape(n, -1)
    zp = None
    if len(node.input) > 3 and node.input[3]:
        z = inits[node.input[3]].reshape(n, -1)
        if bits == 4:
            zz = np.empty((n, z.shape[1] * 2), np.int16)
            zz[:, 0::2], zz[:, 1::2] = z & 0x0F, z >> 4
            z = zz
        zp = z[:, :blocks].astype(np.int16)[rows[0]:rows[1]]
    return q[:, :k][rows[0]:rows[1]], scales[rows[0]:rows[1]], zp


def _check_layer(art, inits, node, rows, name, bits, group, sym):
    """The node holds exactly the artifact's integers of ``name``: same values after MatMulNBits' offset,
    the group's scale (and zero) repeated in each of its blocks."""
    from safetensors.numpy import load_file

    raw = load_file(str(art / "model.safetensors"))
    block = _attr(node, "block_size")
    assert _attr(node, "bits") == (4 if bits == 4 else 8), name
    assert block >= 16 and block & (block - 1) == 0 and group % block == 0, (name, block, group)
    q, scales, zp = _read_back(inits, node, rows)
    stored = raw[f"{name}.qweight"]
    if bits == 4:
        want = np.empty((stored.shape[0], stored.shape[1] * 2), np.int16)
        want[:, 0::2], want[:, 1::2] = stored & 0x0F, stored >> 4
    else:
        want = stored.astype(np.int16)
    rep = group // block
    shift = 128 if bits == 8 and sym else 0  # signed int8 -> MatMulNBits' unsigned bytes, zero 0 -> 128
    np.testing.assert_array_equal(q, want + shift, err_msg=name)
    np.testing.assert_array_equal(scales, np.repeat(raw[f"{name}.scales"].astype(np.float32), rep, 1), err_msg=name)
    zero = (np.repeat(raw[f"{name}.zeros"].astype(np.int16), rep, 1) if not sym
            else np.full(scales.shape, {4: 8, 5: 16, 8: 0}[bits], np.int16)) + shift
    if zp is None:
        assert sym and bits in (4, 8), f"{name}: zero points left out, but they are not MatMulNBits' default"
        zp = np.full(scales.shape, 1 << ((4 if bits == 4 else 8) - 1), np.int16)
    np.testing.assert_array_equal(zp, zero, err_msg=name)
    return block


@pytest.mark.parametrize("bits,group,sym,block", [
    (4, 64, True, 64), (4, 128, True, 128), (4, 32, False, 32), (4, 0, True, None),
    (5, 32, True, 32), (5, 64, False, 64), (8, 0, True, None), (8, 128, False, 128)])
def test_every_grid_goes_into_matmulnbits_with_the_artifacts_integers(bits, group, sym, block, tmp_path):
    art = grid_artifact(_wide(), tmp_path / "q", {r"_proj$": (bits, group, sym)})
    path = export_onnx(art, OnnxConfig(), tmp_path / "out")  # every option at its default: auto
    r = read_manifest(path.parent).report
    assert r["precision"] == "auto" and r["plan"]["integers"] == "artifact" and r["plan"]["post_quantizer"] is None
    assert r["plan"]["linears"] == {f"nbits-int{bits}": 14}
    _, inits, nodes, wmap = _load(path)
    layers = json.loads((art / "quantization.json").read_text())["layers"]
    for name, meta in layers.items():
        node = nodes[wmap[name]["node"]]
        got = _check_layer(art, inits, node, wmap[name]["rows"], name, bits, meta["group_size"], sym)
        # per channel (group = the whole row: 128 or 256 wide) -> the largest power-of-two block, repeated
        assert got == (block or min(meta["group_size"], 256)), (name, got)
        assert f"block {got}" in r["carried"][name]
    if bits == 5:
        assert "5-bit held in 8 bits" in r["carried"]["model.layers.0.mlp.down_proj"]
        assert "14 5-bit layers held in 8-bit MatMulNBits (exact; 8 bits a weight in the file)" in r["plan"]["notes"]
    for name in ("prefill", "kv_cache"):
        assert r["validation"][name]["top1_agreement"] >= r["validation"]["tolerance"]["min_top1"]


def test_a_per_channel_group_that_is_no_power_of_two_repeats_its_scale_in_blocks(tmp_path):
    # the shared tiny widths: hidden 96 = 32 x 3 (SmolLM2's 576 = 64 x 9 is the same case)
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"_proj$": (4, 0, True)})
    path = export_onnx(art, OnnxConfig(), tmp_path / "out")
    _, inits, nodes, wmap = _load(path)
    name = "model.layers.0.self_attn.o_proj"  # in = 96
    assert _check_layer(art, inits, nodes[wmap[name]["node"]], wmap[name]["rows"], name, 4, 96, True) == 32
    assert read_manifest(path.parent).report["carried"][name].endswith("scale repeated x3")


def test_mixed_artifact_is_carried_layer_by_layer_with_float_layers_left_float(tmp_path):
    spec = {r"self_attn\.(q|k|v)_proj": (4, 64, True), r"mlp\.down_proj": (8, 0, True), r"mlp\.(gate|up)_proj": (5, 64, False),
            r"self_attn\.o_proj": None}
    art = grid_artifact(_wide(), tmp_path / "mixed", spec)
    path = export_onnx(art, OnnxConfig(), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["linears"] == {"nbits-int4": 6, "nbits-int8": 2, "nbits-int5": 4, "float": 2}
    assert r["plan"]["integers"] == "artifact" and r["plan"]["lm_head"] == "float32"
    assert "kept in float by the artifact" in r["plan"]["notes"]
    _, inits, nodes, wmap = _load(path)
    layers = json.loads((art / "quantization.json").read_text())["layers"]
    for name, meta in layers.items():
        node = nodes[wmap[name]["node"]]
        _check_layer(art, inits, node, wmap[name]["rows"], name, meta["bits"], meta["group_size"], meta["symmetric"])
    for i in range(2):
        assert nodes[f"layers.{i}.attn.o_proj"].op_type == "MatMul"
        assert nodes[f"layers.{i}.mlp.down_proj"].op_type == "MatMulNBits"


def test_tied_quantized_table_is_carried_once_as_the_artifact_holds_it(tmp_path):
    art = grid_artifact(peaked("gemma3"), tmp_path / "q", {r"_proj$": (4, 32, True)}, embeddings=(8, 0, False))
    path = export_onnx(art, OnnxConfig(), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["embeddings"] == "int8 (artifact)" and r["plan"]["lm_head"] == "int8 (artifact)"
    assert r["plan"]["shared_embeddings"] and r["plan"]["integers"] == "artifact"
    _, inits, nodes, _ = _load(path)
    assert nodes["embed_tokens"].op_type == "GatherBlockQuantized" and _attr(nodes["embed_tokens"], "bits") == 8
    assert nodes["lm_head"].input[2] == nodes["embed_tokens"].input[2]  # one set of scales (and integers)
    inits[nodes["lm_head"].input[1]] = inits[nodes["lm_head/shared_qweight"].input[0]]  # B is a view of the table
    _check_layer(art, inits, nodes["lm_head"], [0, 320], "model.embed_tokens", 8, 96, False)


@pytest.mark.parametrize("qtype,held,also", [("int4", "hold int8", "so does --qtype int8"), ("int8", "hold int4", "")])
def test_a_precision_that_would_re_round_is_refused_before_loading_unless_requantize(qtype, held, also, tmp_path,
                                                                                     run_cli, monkeypatch):
    import export.onnx.export as mod

    bits = 8 if qtype == "int4" else 4
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"_proj$": (bits, 32, True)})
    monkeypatch.setattr(mod, "_load", lambda a: pytest.fail("loaded before refusing"))
    out = tmp_path / "out"
    rc, _, err = run_cli("export", art, "--format", "onnx", "--qtype", qtype, "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{qtype} would round the artifact's calibrated integers again: 14 layers {held}" in err
    assert "--qtype auto carries every layer exactly" in err and "--requantize" in err and also in err
    assert not out.exists()
    monkeypatch.undo()
    rc, _, err = run_cli("export", art, "--format", "onnx", "--qtype", qtype, "--requantize", "--out", out)
    assert rc == 0, err
    r = read_manifest(out).report
    assert r["plan"]["integers"] == "requantized"
    assert r["validation"]["tolerance"]["min_top1"] == {"int4": 0.80, "int8": 0.90}[qtype]  # that precision's own
    assert r["plan"]["linears"] == {f"nbits-int{qtype[3:]}": 14}


def test_a_mixed_artifact_names_every_width_a_precision_cannot_carry(tmp_path):
    spec = {r"self_attn": (4, 32, True), r"mlp\.down_proj": (5, 32, True), r"mlp": (8, 32, True)}
    art = grid_artifact(peaked("llama"), tmp_path / "q", spec)
    with pytest.raises(ConfigError) as e:
        export_onnx(art, OnnxConfig(precision="int4"), tmp_path / "out")
    msg = str(e.value)
    assert "2 layers hold int5 (model.layers.0.mlp.down_proj" in msg and "4 layers hold int8" in msg
    assert "--qtype int8" not in msg  # int8 would not carry the int4 layers either: only auto does


def test_int8_precision_carries_5_bit_and_int8_layers_without_requantize(tmp_path):
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"mlp": (5, 32, True), r"attn": (8, 32, False)})
    path = export_onnx(art, OnnxConfig(precision="int8", accuracy_level=4), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["linears"] == {"nbits-int5": 6, "nbits-int8": 8} and r["plan"]["integers"] == "artifact+head"


def test_accuracy_levels_are_recorded_per_node_and_written_into_the_file(tmp_path):
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"_proj$": (4, 32, True)})
    path = export_onnx(art, OnnxConfig(), tmp_path / "out")
    levels = read_manifest(path.parent).report["accuracy_levels"]
    m, _, _, _ = _load(path)
    in_file = {n.name: _attr(n, "accuracy_level") for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert levels["mode"] == "auto" and levels["nodes"] == in_file and len(in_file) == 8  # qkv, o, gate_up, down x 2 layers
    assert levels["start_all_level_4"]["passes"] and set(in_file.values()) == {4}
    basis = read_manifest(path.parent).report["validation"]["tolerance_basis"]
    assert basis == "the artifact's own integers, int8 activations on 8 of 8 MatMulNBits nodes"
    assert levels["by_kind"] == {"attn.qkv_proj": 4, "attn.o_proj": 4, "mlp.gate_up_proj": 4, "mlp.down_proj": 4}


def test_accuracy_level_auto_gives_float_compute_only_where_the_measurement_needs_it(tmp_path):
    # a KL bound the int8-activation kernel cannot meet on this model, but float compute can: the search
    # probes each kind, floats them most-helpful first and stops when the file passes (or all are float)
    # (float32 scales: float16 activations alone round the logits by KL ~1e-7 here, which this bound would catch)
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"_proj$": (4, 32, True)})
    path = export_onnx(art, OnnxConfig(max_kl=1e-7, scale_type="float32"), tmp_path / "out")
    r = read_manifest(path.parent).report
    levels = r["accuracy_levels"]
    assert not levels["start_all_level_4"]["passes"]
    assert set(levels["probes_kind_at_level_0"]) == {"attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}
    floated = set(levels["float_kinds"])
    assert floated and all(levels["by_kind"][k] == 0 for k in floated)
    assert all(v == 4 for k, v in levels["by_kind"].items() if k not in floated)
    m, _, _, _ = _load(path)
    assert levels["nodes"] == {n.name: _attr(n, "accuracy_level") for n in m.graph.node if n.op_type == "MatMulNBits"}
    # the tolerance follows what the file computes: exact when every node is float, int8's otherwise
    want = 0.98 if floated == set(levels["by_kind"]) else 0.90
    assert r["validation"]["tolerance"]["min_top1"] == want and r["validation"]["tolerance"]["max_kl"] == 1e-7


def test_level_search_floats_kinds_in_the_order_that_helps_most_and_stops_when_it_passes():
    nodes = [f"layers.{i}.{k}" for i in range(3) for k in ("attn.qkv_proj", "mlp.down_proj", "mlp.gate_up_proj")]
    nodes.append("lm_head")
    error = {"lm_head": 0.05, "mlp.down_proj": 0.03, "attn.qkv_proj": 0.001, "mlp.gate_up_proj": 0.002}
    calls = []

    def measure(levels, full):
        calls.append(full)
        kl = sum(e for k, e in error.items() if any(levels[n] == 4 for n in nodes if node_kind(n) == k))
        return Measure(kl <= 0.01, 1.0 - kl, kl)

    choice = choose_levels(nodes, measure)
    assert choice.float_kinds == ["lm_head", "mlp.down_proj"]  # the two that matter, largest first
    assert choice.levels["lm_head"] == 0 and choice.levels["layers.1.mlp.down_proj"] == 0
    assert choice.levels["layers.1.attn.qkv_proj"] == 4 and choice.final.ok and choice.int8_activations
    assert calls == [True, False, False, False, False, True, True]  # probes are prefill-only
    assert choice.report()["by_kind"] == {"attn.qkv_proj": 4, "lm_head": 0, "mlp.down_proj": 0, "mlp.gate_up_proj": 4}


def test_a_real_quantize_output_goes_through_the_onnx_export(run_cli, tmp_path):
    from safetensors.numpy import load_file

    src = peaked("llama")
    q = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", "int4-gptq", "--group-size", "32", "--samples", "4", "--seq-len",
                         "32", "--eval-tokens", "0", "--exclude", "layers\\.1\\.mlp\\.down_proj", "--out", q)
    assert rc == 0, err
    out = tmp_path / "onnx"
    rc, stdout, err = run_cli("export", q, "--format", "onnx", "--out", out)
    assert rc == 0, err
    r = read_manifest(out).report
    assert r["precision"] == "auto" and r["plan"]["integers"] == "artifact"
    assert r["plan"]["linears"] == {"nbits-int4": 13, "float": 1}
    raw = load_file(str(q / "model.safetensors"))
    _, inits, nodes, wmap = _load(out / "model.onnx")
    name = "model.layers.0.self_attn.k_proj"
    got, scales, _ = _read_back(inits, nodes[wmap[name]["node"]], wmap[name]["rows"])
    want = np.empty((raw[f"{name}.qweight"].shape[0], raw[f"{name}.qweight"].shape[1] * 2), np.int16)
    want[:, 0::2], want[:, 1::2] = raw[f"{name}.qweight"] & 0x0F, raw[f"{name}.qweight"] >> 4
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(scales, raw[f"{name}.scales"].astype(np.float32))


def test_a_float_artifact_still_exports_fp32_by_default(tmp_path):
    path = export_onnx(peaked("llama"), OnnxConfig(), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["precision"] == "fp32" and r["plan"]["integers"] == "none"
    assert r["accuracy_levels"] == {"mode": "none", "nodes": {}, "by_kind": {}}


def test_a_version_1_config_keeps_its_meaning():
    old = {"type": "export-onnx", "version": 1, "block_size": 64}
    cfg = OnnxConfig.from_dict(old)
    assert cfg.version == OnnxConfig.VERSION and cfg.precision == "fp32" and cfg.accuracy_level == 4
    assert not cfg.requantize
    assert OnnxConfig.from_dict({"type": "export-onnx", "version": 1, "precision": "int4", "accuracy_level": 0}
                                ) == OnnxConfig(precision="int4", accuracy_level=0, scale_type="float32")
    # version 3 files were written with float32 scales; the default is now auto (float16 where safe)
    assert OnnxConfig.from_dict({"type": "export-onnx", "version": 3}).scale_type == "float32"
    new = OnnxConfig()
    assert new.precision == "auto" and new.accuracy_level == "auto" and OnnxConfig.from_dict(new.to_dict()) == new


def test_grid_fixture_matches_the_formats_reader():
    # the fixture above is written independently of compress; the format's reader must agree with it
    from compress.quantize.format import QuantizedWeight

    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    for bits, sym in ((4, True), (5, True), (5, False), (8, True), (8, False)):
        p = grid_integers(w, bits, 32, sym)
        qw = QuantizedWeight("x", bits, 32, sym, (8, 64), p["qweight"], p["scales"], p.get("zeros"))
        np.testing.assert_array_equal(qw.integers(), p["q"])
        zero = p["zeros"].astype(np.int16) if "zeros" in p else {4: 8, 5: 16, 8: 0}[bits]
        mine = (p["q"].astype(np.int16).reshape(8, 2, 32) - np.asarray(zero)[..., None]) * p["scales"].astype(
            np.float32)[..., None]
        np.testing.assert_array_equal(qw.dequantize(), mine.reshape(8, 64))
        step = np.repeat(np.abs(p["scales"].astype(np.float32)), 32, 1)
        assert (np.abs(qw.dequantize() - w) <= step * 0.5 + 1e-6).all()


def test_8_bit_nodes_left_at_float_compute_are_named_as_onnxruntimes_slow_path(tmp_path):
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"mlp": (8, 32, True), r"attn": (4, 32, True)})
    path = export_onnx(art, OnnxConfig(accuracy_level=0), tmp_path / "out")
    r = read_manifest(path.parent).report
    levels = r["accuracy_levels"]
    assert levels["mode"] == "fixed" and set(levels["nodes"].values()) == {0}
    assert levels["slow_8bit_float_nodes"] == [f"layers.{i}.mlp.{k}" for i in range(2) for k in ("down_proj", "gate_up_proj")]
    assert r["validation"]["tolerance"]["min_top1"] == 0.98  # float compute: the exact tolerance


def test_a_real_mixed_budget_artifact_for_onnx_goes_through_exactly(run_cli, tmp_path):
    # compress quantize's own allocator (the GGUF menu, which has 5 bits): the mix it picks must arrive as is
    src = peaked("llama")
    q = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", "int4-rtn", "--budget-bits", "5.5", "--target", "gguf",
                         "--samples", "4", "--seq-len", "32", "--eval-tokens", "0", "--out", q)
    assert rc == 0, err
    layers = json.loads((q / "quantization.json").read_text())["layers"]
    assert len({m["bits"] for m in layers.values()}) >= 2, layers  # a mix, or this tests nothing
    out = tmp_path / "onnx"
    rc, _, err = run_cli("export", q, "--format", "onnx", "--out", out)
    assert rc == 0, err
    r = read_manifest(out).report
    assert r["plan"]["integers"] == "artifact" and r["plan"]["post_quantizer"] is None
    _, inits, nodes, wmap = _load(out / "model.onnx")
    for name, meta in layers.items():
        if name in ("lm_head", "model.embed_tokens"):
            continue
        node = nodes[wmap[name]["node"]]
        _check_layer(q, inits, node, wmap[name]["rows"], name, meta["bits"], meta["group_size"], meta["symmetric"])
