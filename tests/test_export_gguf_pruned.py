"""Pruned models (fewer layers, a narrower MLP, fewer heads) export with metadata from their tensors."""

from __future__ import annotations

import json

import gguf
import pytest
from test_export_gguf_helpers import memorized_tiny, prune_tiny
from compress.tiny import save_tiny

from compress.errors import ArtifactError, IncompatibleLayerError
from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf


def _fields(path):
    return {k: v.contents() for k, v in gguf.GGUFReader(path).fields.items() if not k.startswith("tokenizer.")}


def test_pruned_llama_exports_with_its_own_shapes(tmp_path):
    big = save_tiny(tmp_path / "big", "llama", num_hidden_layers=4)
    small = prune_tiny(big, tmp_path / "pruned", keep_layers=[0, 2, 3], n_ff=100, keep_kv_heads=1)
    path = export_gguf(small, GGUFConfig(qtype="F32"), tmp_path / "gguf")
    f = _fields(path)
    assert f["llama.block_count"] == 3 and f["llama.feed_forward_length"] == 100
    assert f["llama.attention.head_count"] == 2 and f["llama.attention.head_count_kv"] == 1
    # 2 heads of 24 no longer span the hidden width of 96: llama.cpp must be told the head size
    assert f["llama.attention.key_length"] == 24 and f["llama.rope.dimension_count"] == 24
    shapes = {t.name: tuple(int(s) for s in t.shape) for t in gguf.GGUFReader(path).tensors}
    assert shapes["blk.2.attn_q.weight"] == (96, 48) and shapes["blk.2.ffn_down.weight"] == (100, 96)
    assert "blk.3.attn_q.weight" not in shapes
    v = read_manifest(path.parent).report["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kl_mean"] <= 1e-4


def test_narrow_mlp_rows_fall_back_to_f16_in_block_types(tmp_path):
    """An MLP of 100 channels (and 2 heads of 24 = 48 attention channels) cannot fill 32-wide blocks in
    the rows of ffn_down (and attn_output): those are stored F16, and the report lists them."""
    src = memorized_tiny("llama", num_hidden_layers=3, intermediate_size=100, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=24)
    path = export_gguf(src, GGUFConfig(qtype="Q4_0"), tmp_path / "gguf")
    r = read_manifest(path.parent).report
    assert r["plan"]["fallback"] == [f"blk.{i}.{n}.weight" for i in range(3) for n in ("attn_output", "ffn_down")]
    assert any("stored F16" in n for n in r["notes"])
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q4_0"
    v = r["validation"]
    assert v["top1_agreement"] >= v["min_top1"] and v["kl_mean"] <= v["max_kl"]


def test_pruned_gemma3_keeps_its_layer_pattern(tmp_path):
    big = save_tiny(tmp_path / "big", "gemma3", num_hidden_layers=4,
                    layer_types=["sliding_attention", "full_attention"] * 2)
    small = prune_tiny(big, tmp_path / "pruned", keep_layers=[0, 2, 3], n_ff=128, keep_kv_heads=1)
    path = export_gguf(small, GGUFConfig(qtype="F32", check_tokens=96), tmp_path / "gguf")
    f = _fields(path)
    assert f["gemma3.block_count"] == 3 and f["gemma3.feed_forward_length"] == 128
    assert f["gemma3.attention.sliding_window_pattern"] == 3  # sliding, sliding, full
    assert f["gemma3.attention.head_count"] == 2 and f["gemma3.attention.head_count_kv"] == 1
    v = read_manifest(path.parent).report["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kl_mean"] <= 1e-4


def test_gemma3_layer_pattern_llama_cpp_cannot_express_is_refused(tmp_path):
    big = save_tiny(tmp_path / "big", "gemma3", num_hidden_layers=4,
                    layer_types=["sliding_attention", "full_attention"] * 2)
    small = prune_tiny(big, tmp_path / "pruned", keep_layers=[0, 1, 3], n_ff=160, keep_kv_heads=2)
    with pytest.raises(IncompatibleLayerError, match="layer_types .* not periodic"):
        export_gguf(small, GGUFConfig(qtype="F32"), tmp_path / "gguf")
    assert not (tmp_path / "gguf").exists()


def test_config_that_disagrees_with_the_tensors_is_refused(tmp_path):
    big = save_tiny(tmp_path / "big", "llama", num_hidden_layers=3)
    small = prune_tiny(big, tmp_path / "pruned", keep_layers=[0, 1], n_ff=160, keep_kv_heads=2)
    cfg = json.loads((small / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # a pruning step that forgot the config
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="num_hidden_layers is 3 but the weights have 2"):
        export_gguf(small, GGUFConfig(qtype="F16"), tmp_path / "gguf")
