"""GGUF export of plain models: every type, validated in llama.cpp, and the file read back with gguf-py."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_export_gguf_helpers import memorized_tiny

from compress.errors import ConfigError, ExportMismatchError
from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf
from export.gguf.arch import ARCHS


def _report(path):
    return read_manifest(path.parent).report


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_f32_gguf_matches_pytorch_on_random_tiny_models(arch, tiny_llama_dir, tiny_gemma3_dir, tmp_path):
    """F32 is held to the issue's target with the default tolerance: top-1 >= 99.5%, KL <= 1e-4."""
    src = tiny_llama_dir if arch == "llama" else tiny_gemma3_dir
    path = export_gguf(src, GGUFConfig(qtype="F32", check_tokens=96), tmp_path / "out")
    v = _report(path)["validation"]
    assert v["min_top1"] == 0.995 and v["max_kl"] == 1e-4
    assert v["top1_agreement"] >= 0.995
    assert v["kl_mean"] < 1e-6
    assert v["max_abs_logit_diff"] < 5e-3
    assert v["tokenizer_agreement"] is True


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_every_gguf_type_validates_in_llama_cpp(arch, qtype, tmp_path):
    path = export_gguf(memorized_tiny(arch), GGUFConfig(qtype=qtype), tmp_path / "out")
    r = _report(path)
    tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert tensors["blk.0.ffn_down.weight"] == qtype
    assert tensors["blk.0.attn_norm.weight"] == "F32"
    # 4/5-bit files keep the embedding (the tied output matrix) at 8 bits
    assert tensors["token_embd.weight"] == ("Q8_0" if qtype[:2] in ("Q4", "Q5") else qtype)
    v = r["validation"]
    assert v["top1_agreement"] >= v["min_top1"] and v["kl_mean"] <= v["max_kl"]
    assert r["plan"]["decisions"].get("fallback") is None


@pytest.mark.parametrize("qtype,ggml", [("Q4_K_M", "Q4_K"), ("Q5_K_M", "Q5_K"), ("Q6_K", "Q6_K")])
def test_kquants_come_from_llama_cpps_quantizer(qtype, ggml, tmp_path):
    """k-quants need rows of 256: a tiny model 256 wide (no importance matrix here: see below)."""
    src = memorized_tiny("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2)
    path = export_gguf(src, GGUFConfig(qtype=qtype, imatrix_tokens=0), tmp_path / "out")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == ggml
    assert not (tmp_path / "out" / ".intermediate.F32.gguf").exists()
    v = _report(path)["validation"]
    assert v["top1_agreement"] >= v["min_top1"] and v["kl_mean"] <= v["max_kl"]


def test_gemma3_kquant(tmp_path):
    src = memorized_tiny("gemma3", hidden_size=256, intermediate_size=512, head_dim=64)
    path = export_gguf(src, GGUFConfig(qtype="Q4_K_M", imatrix_tokens=256), tmp_path / "out")
    assert "Q4_K" in {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_gguf_reads_back_with_expected_tensors_and_metadata(tiny_gemma3_dir, tmp_path):
    path = export_gguf(tiny_gemma3_dir, GGUFConfig(qtype="F16"), tmp_path / "out")
    reader = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in reader.fields.items()}
    cfg = json.loads((tiny_gemma3_dir / "config.json").read_text())
    assert f["general.architecture"] == "gemma3"
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert f["gemma3.block_count"] == cfg["num_hidden_layers"] == 2
    assert f["gemma3.embedding_length"] == 96 and f["gemma3.feed_forward_length"] == 160
    assert f["gemma3.attention.head_count"] == 4 and f["gemma3.attention.head_count_kv"] == 2
    assert f["gemma3.attention.key_length"] == 24 and f["gemma3.attention.sliding_window"] == 32
    assert f["gemma3.attention.sliding_window_pattern"] == 2  # layer_types: sliding, full
    assert f["gemma3.rope.freq_base"] == 1e6 and f["gemma3.rope.freq_base_swa"] == 1e4
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.bos_token_id"] == 1
    names = {t.name: (t.tensor_type.name, tuple(int(s) for s in t.shape)) for t in reader.tensors}
    expected_per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm",
                          "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in expected_per_layer}
    assert set(names) == expected  # tied embeddings: no output.weight
    assert names["blk.1.attn_q.weight"] == ("F16", (96, 96))  # GGUF order: (in, out)
    assert names["blk.1.attn_k.weight"] == ("F16", (96, 48))
    assert names["blk.0.attn_q_norm.weight"] == ("F32", (24,))


def test_gemma3_norms_are_stored_plus_one_and_llama_q_rows_permuted(tiny_gemma3_dir, tiny_llama_dir, tmp_path):
    from safetensors.numpy import load_file

    g = export_gguf(tiny_gemma3_dir, GGUFConfig(qtype="F32"), tmp_path / "g")
    t = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(g).tensors}
    hf = load_file(str(tiny_gemma3_dir / "model.safetensors"))
    np.testing.assert_array_equal(t["output_norm.weight"], hf["model.norm.weight"] + 1)
    lpath = export_gguf(tiny_llama_dir, GGUFConfig(qtype="F32"), tmp_path / "l")
    t = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(lpath).tensors}
    hf = load_file(str(tiny_llama_dir / "model.safetensors"))
    q = hf["model.layers.0.self_attn.q_proj.weight"]  # 4 heads of 24 rows
    # llama.cpp pairs row j with row j + 12 of each head (adjacent after the permutation)
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"][0], q[0])
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"][1], q[12])
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"][24 + 1], q[24 + 12])
    np.testing.assert_array_equal(t["blk.0.attn_v.weight"], hf["model.layers.0.self_attn.v_proj.weight"])


def test_gguf_names_agree_with_gguf_py_tensor_map():
    for spec in ARCHS.values():
        tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch.upper()], 2)
        for rule in spec.rules:
            hf = rule.hf.format(bid=1)
            assert tmap.get_name(hf, try_suffixes=(".weight", ".bias")) == rule.gguf.format(bid=1), hf


def test_missing_rope_permutation_is_caught_as_a_mismatch(tiny_llama_dir, tmp_path, monkeypatch):
    """The validation has teeth: without llama's q/k row order, llama.cpp computes another model."""
    import export.gguf.plan as plan

    real = plan.TensorPlan.produce
    monkeypatch.setattr(plan.TensorPlan, "produce",
                        lambda self, src: real(plan.dataclasses.replace(self, rope_heads=0), src))
    with pytest.raises(ExportMismatchError, match=r"disagrees with PyTorch.*Worst output: position \d+"):
        export_gguf(tiny_llama_dir, GGUFConfig(qtype="F32"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_missing_gemma_norm_offset_is_caught_as_a_mismatch(tiny_gemma3_dir, tmp_path, monkeypatch):
    import export.gguf.plan as plan

    real = plan.TensorPlan.produce
    monkeypatch.setattr(plan.TensorPlan, "produce",
                        lambda self, src: real(plan.dataclasses.replace(self, transform=None), src))
    with pytest.raises(ExportMismatchError, match="top-1 agreement"):
        export_gguf(tiny_gemma3_dir, GGUFConfig(qtype="F32"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_export_twice_is_reused(tiny_llama_dir, tmp_path):
    cfg = GGUFConfig(qtype="Q8_0", check_tokens=32)
    path = export_gguf(tiny_llama_dir, cfg, tmp_path / "out")
    first = read_manifest(path.parent).created, path.stat().st_mtime_ns
    again = export_gguf(tiny_llama_dir, cfg, tmp_path / "out")
    assert again == path
    assert (read_manifest(path.parent).created, path.stat().st_mtime_ns) == first


def test_config_round_trips_and_lists_types():
    from compress.config import config_from_dict

    cfg = GGUFConfig(qtype="Q4_K_M", embeddings="Q8_0", min_top1=0.5)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["type"] == "export-gguf" and cfg.version == 2
    assert GGUFConfig().qtype == "auto" and GGUFConfig().embedding_type() is None
    assert GGUFConfig(qtype="Q4_0").embedding_type() == "Q8_0"
    assert GGUFConfig(qtype="F16").tolerance().min_top1 == 0.98
    assert GGUFConfig(qtype="Q4_K_M").imatrix() == 4096 and GGUFConfig(qtype="Q8_0").imatrix() == 0
    with pytest.raises(ConfigError, match="only steers llama.cpp's k-quants"):
        GGUFConfig(qtype="Q4_0", imatrix_tokens=1024)


def test_version_1_configs_load_with_their_old_meaning():
    """v1 wrote F16 when no qtype was given and re-rounded every layer with reuse_integers: false."""
    old = {"type": "export-gguf", "version": 1, "embeddings": "auto", "reuse_integers": True, "check_tokens": 64,
           "min_top1": None, "max_kl": None, "imatrix_tokens": None, "threads": 2}
    cfg = GGUFConfig.from_dict(old)
    assert (cfg.qtype, cfg.requantize, cfg.version, cfg.check_tokens) == ("F16", False, 2, 64)
    cfg = GGUFConfig.from_dict({**old, "qtype": "Q4_0", "reuse_integers": False})
    assert (cfg.qtype, cfg.requantize) == ("Q4_0", True)
    with pytest.raises(ConfigError, match="float_type"):
        GGUFConfig(float_type="Q4_0")


def _imatrix_seen(monkeypatch, **overrides) -> tuple[Path, dict]:
    """A tiny memorized llama (``overrides`` on its config) and the importance matrix llama.cpp's
    quantizer will be handed, filled in by a spy when an export runs."""
    import export.gguf.export as ex

    src = memorized_tiny("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2, **overrides)
    seen: dict = {}
    real = ex.quantize_with_llama_cpp

    def spy(*a, imatrix=None, **k):
        seen.update(imatrix or {})
        return real(*a, imatrix=imatrix, **k)

    monkeypatch.setattr(ex, "quantize_with_llama_cpp", spy)
    return src, seen


def test_importance_matrix_reaches_llama_cpps_quantizer(tmp_path, monkeypatch):
    src, seen = _imatrix_seen(monkeypatch)
    with_imat = export_gguf(src, GGUFConfig(qtype="Q4_K_M", imatrix_tokens=256), tmp_path / "imat")
    assert seen["blk.0.ffn_down.weight"].shape == (512,) and seen["blk.1.attn_q.weight"].shape == (256,)
    assert len(seen) == 2 * 7 + 1 and "output.weight" in seen  # untied tiny llama: output has its own
    assert all(np.isfinite(v).all() and (v > 0).all() for v in seen.values())
    plain = export_gguf(src, GGUFConfig(qtype="Q4_K_M", imatrix_tokens=0), tmp_path / "plain")
    a = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(with_imat).tensors}
    b = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(plain).tensors}
    assert not np.array_equal(a["blk.0.ffn_gate.weight"], b["blk.0.ffn_gate.weight"])  # it steered the rounding
    assert _report(with_imat)["imatrix_tokens"] == 256


def test_a_tied_tables_importance_matrix_is_filed_under_token_embd(tmp_path, monkeypatch):
    """A tied GGUF has no output.weight: the head's statistics must reach the table llama.cpp quantizes."""
    src, seen = _imatrix_seen(monkeypatch, tie_word_embeddings=True)
    out = export_gguf(src, GGUFConfig(qtype="Q4_K_M", imatrix_tokens=256), tmp_path / "tied")
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert "output.weight" not in seen and seen["token_embd.weight"].shape == (256,)


def test_wrong_metadata_in_a_4_bit_file_is_caught_against_its_own_weights(tmp_path, monkeypatch):
    """A rope base off by 10x is a smaller error than 4-bit rounding on some models; the comparison with
    PyTorch running the file's own weights has no 4-bit budget to hide it in."""
    import export.gguf.export as ex

    real = ex.arch_metadata

    def wrong_rope(*a, **k):
        md = real(*a, **k)
        md["llama.rope.freq_base"] *= 10
        return md

    monkeypatch.setattr(ex, "arch_metadata", wrong_rope)
    with pytest.raises(ExportMismatchError, match="file's own weights"):
        export_gguf(memorized_tiny("llama"), GGUFConfig(qtype="Q4_0"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
