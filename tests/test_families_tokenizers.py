"""Tokenizers to GGUF: each kind becomes what llama.cpp expects, and llama.cpp then tokenizes the validation's
multilingual probe (code, digit runs, whitespace runs) exactly as the Hugging Face tokenizer does."""

from __future__ import annotations

import json
import shutil

import gguf
import pytest
from compress.tiny import _training_text, build_tokenizer, family_model

from compress.errors import IncompatibleLayerError
from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf
from export.gguf.tokenizer import pre_tokenizer_name


def _folder(tmp_path, tok, name="m"):
    """A tiny Llama of vocabulary 512 with ``tok``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = tmp_path / name
    family_model("llama", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _export(src, out):
    path = export_gguf(src, GGUFConfig(qtype="F32", check_tokens=32), out)
    return read_manifest(out).report, {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()
                                       if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.tokens",
                                                                                        "tokenizer.ggml.merges")}


@pytest.mark.parametrize("kind,model,pre", [("gpt2", "gpt2", "gpt-2"), ("llama-bpe", "gpt2", "llama-bpe"),
                                            ("qwen2", "gpt2", "qwen2"), ("spm", "llama", "default"),
                                            ("spm-gemma", "llama", "default")])
def test_each_tokenizer_kind_reaches_llama_cpp_with_the_same_ids(kind, model, pre, tmp_path):
    tok = build_tokenizer(kind.startswith("spm"), kind=kind, vocab=512)
    report, md = _export(_folder(tmp_path, tok), tmp_path / "out")
    v = report["validation"]
    assert v["tokenizer_agreement"] is True and v["tokenizer_probe_tokens"] > 500, v
    assert md["tokenizer.ggml.model"] == model and md["tokenizer.ggml.pre"] == pre
    if model == "llama":  # SentencePiece: scores, byte pieces, and the leading-space rule
        types = gguf.GGUFReader(tmp_path / "out" / "model.F32.gguf").fields["tokenizer.ggml.token_type"].contents()
        assert types.count(int(gguf.TokenType.BYTE)) == 256
        assert md["tokenizer.ggml.add_space_prefix"] is (kind == "spm")


def _sentencepiece_model(tmp_path):
    import sentencepiece as spm

    text = tmp_path / "train.txt"
    text.write_text(_training_text())
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "tokenizer"), vocab_size=512,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   split_digits=True, allow_whitespace_only_pieces=True, minloglevel=2,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    return tmp_path / "tokenizer.model"


@pytest.mark.parametrize("keep_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json-only"])
def test_sentencepiece_vocabulary_from_a_hub_style_folder(keep_model_file, tmp_path):
    """A Llama 2 / Mistral / Gemma style folder: tokenizer.model (scores read with sentencepiece, as llama.cpp's
    converter does) beside the tokenizer.json transformers made from it; or that tokenizer.json alone."""
    from transformers import AutoTokenizer

    sp_dir = tmp_path / "sp"
    sp_dir.mkdir()
    shutil.copy(_sentencepiece_model(tmp_path), sp_dir / "tokenizer.model")
    (sp_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True}))
    tok = AutoTokenizer.from_pretrained(str(sp_dir))
    src = _folder(tmp_path, tok)
    if keep_model_file:
        shutil.copy(sp_dir / "tokenizer.model", src / "tokenizer.model")
    report, md = _export(src, tmp_path / "out")
    assert report["validation"]["tokenizer_agreement"] is True
    assert report["tokenizer"]["tokenizer_source"].startswith(
        f"built from {'tokenizer.model' if keep_model_file else 'tokenizer.json'}")
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_bos_token"] is True


def test_an_unknown_byte_level_pre_tokenizer_is_refused_naming_the_known_ones(tmp_path):
    pt = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated"},
                                                {"type": "ByteLevel", "use_regex": False}]}
    with pytest.raises(IncompatibleLayerError, match="Qwen2 Split \\+ ByteLevel \\(qwen2\\)"):
        pre_tokenizer_name(pt, tmp_path / "tokenizer.json")
