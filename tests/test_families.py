"""Guard tests for the family table (compress/families.py): every row has a tiny model that goes through
quantize -> GGUF (llama.cpp) -> ONNX (onnxruntime, KV cache included) -> chat --once, and what the table
refuses is refused from config.json and the tokenizer files alone, before any weight is read."""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import pytest
from artifact_fixtures import train_on_ids
from compress.tiny import FAMILY_CONFIGS, FAMILY_TOKENIZERS, family_model, family_tokenizer, save_family

from compress.errors import IncompatibleLayerError
from compress.families import BY_NAME, FAMILIES, check_model_files, family_for
from compress.manifest import read_manifest

NAMES = [f.name for f in FAMILIES]
# tiny tokenizer kind -> (tokenizer.ggml.model, tokenizer.ggml.pre) llama.cpp must be told
GGUF_TOKENIZER = {"llama-bpe": ("gpt2", "llama-bpe"), "qwen2": ("gpt2", "qwen2"), "spm": ("llama", "default"),
                  "spm-gemma": ("llama", "default")}


def test_every_row_has_a_tiny_config_and_every_tiny_config_a_row():
    assert sorted(FAMILY_CONFIGS) == sorted(BY_NAME)


def test_every_tiny_model_is_recognized_as_its_own_row(tmp_path):
    for name in NAMES:
        config = family_model(name).config.to_dict()
        assert family_for(config).name == name


@functools.lru_cache(maxsize=None)
def _memorized(name: str, root: str):
    """The family's tiny model trained on the GGUF/ONNX check ids (predictions are peaked, so top-1
    agreement measures the export, not near-ties of a random model)."""
    from pathlib import Path

    from compress.gguf_import import check_ids

    tok = family_tokenizer(name)
    return train_on_ids(family_model(name), tok, Path(root) / name, check_ids(tok, 128), 120)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return lambda name: _memorized(name, str(root))


@pytest.mark.parametrize("name", NAMES)
def test_family_goes_through_quantize_gguf_onnx_and_chat(name, memorized, tmp_path, run_cli):
    src = memorized(name)
    # fp32 GGUF: llama.cpp agrees with PyTorch (top-1 >= 99.5%) and tokenizes the probe text the same
    rc, _, err = run_cli("export", src, "--format", "gguf", "--qtype", "F32", "--out", tmp_path / "f32")
    assert rc == 0, err
    r = read_manifest(tmp_path / "f32").report
    v = r["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kl_mean"] <= 1e-4 and v["tokenizer_agreement"] is True, v
    tokenizer = (r["tokenizer"]["tokenizer_model"], r["tokenizer"]["tokenizer_pre"])
    assert tokenizer == GGUF_TOKENIZER[FAMILY_TOKENIZERS[name]]
    assert r["tokenizer"]["chat_template"] is True  # chat below renders the family's own template
    # RTN int4, then its integers carried into GGUF Q4_0 and ONNX MatMulNBits
    q = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", "int4-rtn", "--group-size", "32", "--out", q)
    assert rc == 0, err
    rc, _, err = run_cli("export", q, "--format", "gguf", "--qtype", "Q4_0", "--out", tmp_path / "q4")
    assert rc == 0, err
    r = read_manifest(tmp_path / "q4").report
    assert r["validation"]["top1_agreement"] >= r["validation"]["min_top1"]
    rc, _, err = run_cli("export", q, "--format", "onnx", "--qtype", "int4", "--out", tmp_path / "onnx")
    assert rc == 0, err
    v = read_manifest(tmp_path / "onnx").report["validation"]
    assert {"prefill", "kv_cache"} <= set(v), v  # the KV-cache path is validated, not only the prefill
    for art in (tmp_path / "q4" / "model.Q4_0.gguf", tmp_path / "onnx"):
        rc, out, err = run_cli("chat", art, "--once", "hello there", "--max-new-tokens", "4")
        assert rc == 0, err
        # a tiny model may well answer with spaces; that it answered shows in the speed line after it
        assert out and "tok/s" in err, f"{name}: no answer from {art.name}: {err}"


@pytest.mark.parametrize("name", NAMES)
def test_eval_scores_every_family(name, memorized, run_cli):
    rc, out, err = run_cli("eval", memorized(name), "--tasks", "", "--max-tokens", "64", "--window", "32",
                           "--stride", "32", "--json")
    assert rc == 0, err
    assert "perplexity" in out


@pytest.mark.parametrize("name", NAMES)
def test_awq_folds_what_the_family_row_says(name, memorized, tmp_path, run_cli):
    """AWQ runs on every family; Phi-3's fused projections leave only the norm folds (the row says so)."""
    rc, _, err = run_cli("quantize", memorized(name), "--scheme", "int4-awq", "--group-size", "32", "--samples", "2",
                         "--seq-len", "32", "--eval-tokens", "0", "--out", tmp_path / "awq")
    assert rc == 0, err
    ratios = json.dumps(read_manifest(tmp_path / "awq").report)
    fused = BY_NAME[name].fused_qkv
    assert ("v_proj->o_proj" in ratios) is not fused and ("up_proj->down_proj" in ratios) is not fused
    if fused:
        assert "qkv_proj" in ratios and BY_NAME[name].awq.startswith("norm folds only")


@pytest.mark.parametrize("name", NAMES)
def test_width_pruning_where_the_row_allows_it_and_a_refusal_naming_why_elsewhere(name, memorized, tmp_path, run_cli):
    """Fewer heads, KV heads and MLP channels: the pruned model still exports (its shapes read from the weights);
    Phi-3's fused projections are refused with the reason."""
    cfg = FAMILY_CONFIGS[name][1]
    target = f"ffn=128,heads={cfg['num_attention_heads'] // 2},kv_heads=1"
    out = tmp_path / "w"
    rc, _, err = run_cli("prune", memorized(name), "--method", "width", "--target", target, "--samples", "2",
                         "--seq-len", "32", "--eval-tokens", "0", "--out", out)
    if BY_NAME[name].prune_width is not None:
        assert rc == 2 and f"width pruning is not supported for {name} (fused qkv_proj" in err, err
        return
    assert rc == 0, err
    rc, _, err = run_cli("export", out, "--format", "onnx", "--qtype", "fp32", "--out", tmp_path / "o")
    assert rc == 0, err
    rc, _, err = run_cli("export", out, "--format", "gguf", "--qtype", "F32", "--out", tmp_path / "g")
    if BY_NAME[name].gguf_q_is_square:  # qwen2: llama.cpp's graph has no place for fewer query heads
        assert rc == 2 and "takes q as hidden x hidden" in err and not (tmp_path / "g").exists(), err
    else:
        assert rc == 0, err


def test_llama3_rope_freqs_are_transformers_own_scaling():
    """rope_freqs (what llama.cpp divides each frequency by) equals default / llama3-scaled inv_freq."""
    import torch

    from export.gguf.hparams import rope_freqs

    model = family_model("llama")
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    base = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ratio = (base / model.model.rotary_emb.inv_freq.double()).numpy()
    got = rope_freqs(cfg.to_dict(), d)
    np.testing.assert_allclose(got, ratio, rtol=1e-5)
    assert got.min() == 1.0 and got.max() == 8.0 and ((got > 1) & (got < 8)).any()  # all three bands


# ---- refused before the weights load ------------------------------------------------------------------

def _no_weights(tmp_path, name="llama", **config_changes):
    """A family folder with its config and tokenizer but no weight files at all."""
    folder = save_family(tmp_path / "m", name)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(config_changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


REFUSALS = [
    (dict(architectures=["Olmo2ForCausalLM"], model_type="olmo2"),
     ["Olmo2ForCausalLM", "supported: llama (LlamaForCausalLM)", "qwen3 (Qwen3ForCausalLM)", "phi3"]),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None),
     ["rope_type 'yarn'", "supported: default, linear, llama3"]),
]


@pytest.mark.parametrize("changes,needles", REFUSALS, ids=["family", "rope_type"])
@pytest.mark.parametrize("stage", ["quantize", "eval", "prune", "gguf", "onnx"])
def test_unsupported_model_is_refused_from_its_config_before_any_weight(stage, changes, needles, tmp_path, run_cli):
    folder = _no_weights(tmp_path, **changes)
    out = tmp_path / "out"
    args = {"quantize": ["quantize", folder, "--scheme", "int8", "--out", out],
            "eval": ["eval", folder],
            "prune": ["prune", folder, "--method", "depth", "--target", "1", "--out", out],
            "gguf": ["export", folder, "--format", "gguf", "--out", out],
            "onnx": ["export", folder, "--format", "onnx", "--out", out]}[stage]
    t0 = time.perf_counter()
    rc, _, err = run_cli(*args)
    took = time.perf_counter() - t0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "no weights" not in lines[0]  # refused for what it is, not for the missing files
    assert took < 2.0, f"{stage}: refusal took {took:.2f} s"
    assert not out.exists()


@pytest.mark.parametrize("name", [f.name for f in FAMILIES if f.prune_width is not None])
def test_width_pruning_is_refused_from_the_family_row_before_any_weight(name, tmp_path, run_cli):
    folder = _no_weights(tmp_path, name)
    t0 = time.perf_counter()
    rc, _, err = run_cli("prune", folder, "--method", "width", "--target", "ffn=64", "--out", tmp_path / "out")
    took = time.perf_counter() - t0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert f"width pruning is not supported for {name} ({BY_NAME[name].prune_width}); {name} takes depth" in lines[0]
    assert took < 2.0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes,needles", REFUSALS, ids=["family", "rope_type"])
def test_recipe_dry_run_says_the_same_before_any_weight(changes, needles, tmp_path, run_cli):
    import yaml

    folder = _no_weights(tmp_path, **changes)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(folder), "work_dir": str(tmp_path / "work"),
        "quantize": [{"name": "q", "scheme": "int4-rtn", "group_size": 32, "eval_tokens": 0}],
        "export": [{"name": "g", "format": "gguf", "from": "q", "qtype": "Q4_0"}]}))
    rc, _, err = run_cli("run", recipe, "--dry-run")
    assert rc == 2, err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "work" / "quantize-q").exists()


def test_a_tokenizer_kind_the_family_does_not_take_is_refused(tmp_path):
    folder = _no_weights(tmp_path)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"] = {"type": "WordPiece", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(IncompatibleLayerError, match="a WordPiece tokenizer model; supported for llama: byte-level"):
        check_model_files(folder)


def test_refusal_names_every_supported_family():
    with pytest.raises(IncompatibleLayerError) as e:
        family_for({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
    for f in FAMILIES:
        assert f"{f.name} ({f.hf_architectures[0]})" in str(e.value)


def test_settings_the_exporters_cannot_carry_are_refused_with_the_reason():
    from compress.families import check_config

    with pytest.raises(IncompatibleLayerError, match="use_sliding_window is True, not supported for qwen2: llama.cpp"):
        check_config(BY_NAME["qwen2"], {"use_sliding_window": True}, "x")
    phi = BY_NAME["phi3"]  # longrope and partial rotary are carried (tests/test_families_longrope.py), if coherent
    with pytest.raises(IncompatibleLayerError, match=r"rope short_factor has 1 values; longrope needs one per rotary "
                                                     r"frequency \(48 = rotary dims 96 / 2\)"):
        check_config(phi, {"rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]},
                           "hidden_size": 3072, "num_attention_heads": 32, "original_max_position_embeddings": 4096},
                     "x")
    with pytest.raises(IncompatibleLayerError, match="partial_rotary_factor 0.75 is not supported for qwen2"):
        check_config(BY_NAME["qwen2"], {"partial_rotary_factor": 0.75}, "x")
