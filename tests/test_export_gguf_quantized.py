"""Quantized artifacts to GGUF: our int4/int8 group-32 integers land in Q4_0/Q8_0 blocks unchanged; a
re-rounding (groups of 16, k-quants) happens only when asked with requantize, and the report says so loudly.
Every other grid: test_export_gguf_exact.py."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_export_gguf_helpers import dequantize, memorized_tiny, rtn_artifact

from compress.errors import ArtifactError, IncompatibleLayerError
from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf
from export.gguf.arch import rope_rows


def _blocks(path) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF tensor name -> (type, dequantized float32 [out, in]) by gguf-py's reference dequantizer."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = (t.tensor_type.name, data.reshape([int(s) for s in reversed(t.shape.tolist())]))
    return out


def _artifact_weights(art, bits, group):
    info = json.loads((art / "quantization.json").read_text())
    raw = load_file(str(art / "model.safetensors"))
    res = {}
    for lin in info["layers"]:
        parts = {k: raw[f"{lin}.{k}"] for k in ("qweight", "scales", "zeros") if f"{lin}.{k}" in raw}
        res[lin] = dequantize(parts, bits, group)
    return res


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_int4_group32_integers_land_in_q4_0_blocks_unchanged(arch, tmp_path):
    art = rtn_artifact(memorized_tiny(arch), tmp_path / "int4", bits=4, group=32, embeddings=True)
    path = export_gguf(art, GGUFConfig(qtype="Q4_0"), tmp_path / "gguf")
    blocks = _blocks(path)
    ours = _artifact_weights(art, 4, 32)
    cfg = json.loads((art / "config.json").read_text())
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    checked = 0
    for lin, w in ours.items():
        if lin == "model.embed_tokens":
            gname = "token_embd.weight"
        else:
            i, proj = int(lin.split(".")[2]), lin.split(".")[-1]
            gname = f"blk.{i}.{names[proj]}.weight"
            if arch == "llama" and proj in heads:  # llama.cpp's rope row order, same integers
                w = w[rope_rows(w.shape[0], heads[proj])]
        qtype, data = blocks[gname]
        assert qtype == "Q4_0", gname
        np.testing.assert_array_equal(data, w, err_msg=gname)  # bit-exact, not close
        checked += 1
    assert checked == 2 * 7 + 1
    r = read_manifest(path.parent).report
    assert r["plan"]["decisions"]["exact"] == checked and "requantized" not in r["plan"]
    assert r["quantized_input_layers"] == checked
    v = r["validation"]  # against the artifact's own dequantized PyTorch model
    assert v["min_top1"] == 0.90 and v["top1_agreement"] >= 0.90 and v["kl_mean"] <= v["max_kl"]


def test_int8_group32_integers_land_in_q8_0_blocks_unchanged(tmp_path):
    art = rtn_artifact(memorized_tiny("llama"), tmp_path / "int8", bits=8, group=32)
    path = export_gguf(art, GGUFConfig(qtype="Q8_0"), tmp_path / "gguf")
    blocks = _blocks(path)
    w = _artifact_weights(art, 8, 32)["model.layers.1.mlp.down_proj"]
    qtype, data = blocks["blk.1.ffn_down.weight"]
    assert qtype == "Q8_0"
    np.testing.assert_array_equal(data, w)
    raw = gguf.GGUFReader(path).tensors
    t = next(x for x in raw if x.name == "blk.1.ffn_down.weight")
    q = np.asarray(t.data).reshape(-1, 34)[:, 2:].view(np.int8)  # the int8 values of each block
    ours = load_file(str(art / "model.safetensors"))["model.layers.1.mlp.down_proj.qweight"]
    np.testing.assert_array_equal(q.reshape(ours.shape), ours)


def test_mixed_int4_int8_artifact_keeps_each_layers_own_block_type(tmp_path):
    """A Q4_0 export keeps an int8 layer as Q8_0 rather than throwing its precision away."""
    src = memorized_tiny("llama")
    int4 = rtn_artifact(src, tmp_path / "int4", bits=4, group=32, skip=("down_proj",))
    # give the down projections int8 integers by hand-merging an int8 artifact's tensors
    int8 = rtn_artifact(src, tmp_path / "int8", bits=8, group=32)
    from safetensors.numpy import save_file

    from compress.manifest import ArtifactWriter
    from test_export_gguf_helpers import RTNFixtureConfig

    a, b = load_file(str(int4 / "model.safetensors")), load_file(str(int8 / "model.safetensors"))
    qa, qb = (json.loads((d / "quantization.json").read_text()) for d in (int4, int8))
    for lin in [n for n in qb["layers"] if n.endswith("down_proj")]:
        del a[f"{lin}.weight"]
        a.update({f"{lin}.{k}": b[f"{lin}.{k}"] for k in ("qweight", "scales")})
        qa["layers"][lin] = qb["layers"][lin]
    qa["skipped"] = {}
    with ArtifactWriter(tmp_path / "mixed", stage="quantize", config=RTNFixtureConfig(), input_id="mixed") as w:
        save_file(a, str(w.path / "model.safetensors"))
        for f in int4.iterdir():
            if f.name not in ("model.safetensors", "quantization.json", "manifest.json"):
                (w.path / f.name).write_bytes(f.read_bytes())
        (w.path / "quantization.json").write_text(json.dumps(qa))
    path = export_gguf(tmp_path / "mixed", GGUFConfig(qtype="Q4_0"), tmp_path / "gguf")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert read_manifest(path.parent).report["plan"]["decisions"]["exact"] == 14


def test_other_group_sizes_are_requantized_only_when_asked_and_the_report_says_so(tmp_path):
    art = rtn_artifact(memorized_tiny("llama"), tmp_path / "g16", bits=4, group=16, symmetric=True)
    with pytest.raises(IncompatibleLayerError, match="groups of 16 are not whole 32-wide blocks"):
        export_gguf(art, GGUFConfig(qtype="Q4_0"), tmp_path / "refused")
    path = export_gguf(art, GGUFConfig(qtype="Q4_0", requantize=True), tmp_path / "gguf")
    r = read_manifest(path.parent).report
    assert r["plan"]["decisions"]["requantized"] == len(r["plan"]["requantized"]) == 14
    assert "exact" not in r["plan"]["decisions"] and r["requantized"] is True
    assert r["notes"][0].startswith("REQUANTIZED") and "rounded again to Q4_0" in r["notes"][0]
    assert r["validation"]["min_top1"] == 0.50  # Q4_0's own tolerance: what the file did, declared


def test_asymmetric_int4_is_carried_exactly_in_q4_1(tmp_path):
    art = rtn_artifact(memorized_tiny("llama"), tmp_path / "asym", bits=4, group=32, symmetric=False)
    path = export_gguf(art, GGUFConfig(qtype="Q4_1"), tmp_path / "gguf")
    r = read_manifest(path.parent).report
    assert r["plan"]["decisions"]["exact"] == 14 and r["exactness"]["checked"] == 14
    v = r["validation"]
    assert v["min_top1"] == 0.90 and v["top1_agreement"] >= v["min_top1"]


def test_quantized_artifact_to_f32_is_its_exact_dequantization(tmp_path):
    art = rtn_artifact(memorized_tiny("gemma3"), tmp_path / "int4", bits=4, group=32)
    path = export_gguf(art, GGUFConfig(qtype="F32"), tmp_path / "gguf")
    qtype, data = _blocks(path)["blk.1.ffn_gate.weight"]
    assert qtype == "F32"
    np.testing.assert_array_equal(data, _artifact_weights(art, 4, 32)["model.layers.1.mlp.gate_proj"])
    v = read_manifest(path.parent).report["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kl_mean"] <= 1e-4


def test_kquant_of_a_quantized_artifact_needs_requantize_and_says_integers_were_not_kept(tmp_path):
    src = memorized_tiny("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2)
    art = rtn_artifact(src, tmp_path / "int4", bits=4, group=32)
    with pytest.raises(IncompatibleLayerError, match="Q4_K_M is re-fitted by llama.cpp's quantizer"):
        export_gguf(art, GGUFConfig(qtype="Q4_K_M"), tmp_path / "refused")
    path = export_gguf(art, GGUFConfig(qtype="Q4_K_M", requantize=True), tmp_path / "gguf")
    r = read_manifest(path.parent).report
    assert r["notes"][0].startswith("REQUANTIZED") and "Q4_K_M" in r["notes"][0]
    assert "re-rounded the calibrated integers" in r["validation"]["tolerance_basis"]


def test_corrupt_quantized_tensor_is_refused_naming_it(tmp_path):
    art = rtn_artifact(memorized_tiny("llama"), tmp_path / "int4", bits=4, group=32)
    q = json.loads((art / "quantization.json").read_text())
    q["layers"]["model.layers.0.mlp.up_proj"]["shape"] = [160, 64]  # does not match the stored integers
    (art / "quantization.json").write_text(json.dumps(q))
    m = json.loads((art / "manifest.json").read_text())
    m["files"]["quantization.json"] = (art / "quantization.json").stat().st_size
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="model.layers.0.mlp.up_proj"):
        export_gguf(art, GGUFConfig(qtype="Q4_0"), tmp_path / "gguf")
    assert not (tmp_path / "gguf").exists()


def test_reference_without_the_quantize_stages_loader_is_the_exact_dequantization(tmp_path, monkeypatch):
    """Exports do not depend on compress.quantize being importable: the reference is then rebuilt from
    the artifact's integers by the export itself."""
    from compress import kinds

    monkeypatch.setattr(kinds, "pytorch_loader", lambda stage: None)
    art = rtn_artifact(memorized_tiny("gemma3"), tmp_path / "int4", bits=4, group=32)
    path = export_gguf(art, GGUFConfig(qtype="Q4_0"), tmp_path / "gguf")
    v = read_manifest(path.parent).report["validation"]
    assert v["reference"].startswith("dequantized by the export")
    assert v["top1_agreement"] >= v["min_top1"] and v["kl_mean"] <= v["max_kl"]
