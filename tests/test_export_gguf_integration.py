"""Bundled models to GGUF (integration tier: ``pytest -m integration``; minutes, real weights)."""

from __future__ import annotations

import pytest

from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf

pytestmark = pytest.mark.integration


def test_smollm2_q4_k_m_chats_with_its_own_template(tmp_path):
    from llama_cpp import Llama

    path = export_gguf("smollm2-135m", GGUFConfig(qtype="Q4_K_M"), tmp_path / "q4km")
    r = read_manifest(path.parent).report
    assert r["tokenizer"]["chat_template"] and r["tokenizer"]["tokenizer_pre"] == "smollm"
    assert r["validation"]["top1_agreement"] >= r["validation"]["min_top1"]
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    try:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                         max_tokens=32, temperature=0.0)
    finally:
        llm.close()
    assert "Paris" in out["choices"][0]["message"]["content"]


def test_smollm2_f32_gguf_agrees_with_pytorch_to_the_issue_target(tmp_path):
    path = export_gguf("smollm2-135m", GGUFConfig(qtype="F32"), tmp_path / "f32")
    v = read_manifest(path.parent).report["validation"]
    assert v["top1_agreement"] >= 0.995
    assert abs(v["llamacpp_perplexity"] / v["torch_perplexity"] - 1) < 1e-3


def test_gemma3_exports_and_validates(tmp_path):
    path = export_gguf("gemma3-270m", GGUFConfig(qtype="Q8_0"), tmp_path / "q8")
    r = read_manifest(path.parent).report
    assert r["architecture"] == "gemma3" and r["tokenizer"]["tokenizer_model"] == "llama"
    assert r["metadata"]["gemma3.attention.sliding_window_pattern"] == 6
    assert r["validation"]["top1_agreement"] >= r["validation"]["min_top1"]
