"""Metadata type checks and tokenizer conversion choices (no model runs: milliseconds)."""

from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGUFValueType as T

from compress.errors import ArtifactError, IncompatibleLayerError
from export.gguf.metadata import Metadata
from export.gguf.tokenizer import from_tokenizer_json, pre_tokenizer_name


@pytest.mark.parametrize("key,value", [
    ("llama.block_count", -1),
    ("llama.block_count", 2**32),
    ("llama.block_count", True),
    ("llama.block_count", "30"),
    ("llama.rope.freq_base", float("nan")),
    ("llama.attention.layer_norm_rms_epsilon", "1e-5"),
    ("tokenizer.ggml.add_bos_token", 1),
    ("tokenizer.ggml.tokens", []),
    ("tokenizer.ggml.tokens", ["a", 2]),
    ("tokenizer.ggml.token_type", [1, 2**31]),
    ("general.name", None),
])
def test_metadata_values_are_type_checked_before_writing(key, value):
    md = Metadata()
    with pytest.raises(ArtifactError, match=f"GGUF metadata {key}"):
        md.add(key, value, where="config.json")


def test_metadata_rejects_undeclared_keys_and_wrong_declared_types():
    md = Metadata()
    with pytest.raises(ArtifactError, match="no declared type"):
        md.add("llama.made_up_key", 1)
    with pytest.raises(ArtifactError, match="FLOAT32 given where UINT32 is declared"):
        md.add("llama.block_count", 30.0, T.FLOAT32)
    md.add("llama.block_count", 30)
    md.add("tokenizer.ggml.tokens", ["a", "b"])
    md.add("tokenizer.ggml.eot_token_id", 7)  # keys copied from a source GGUF follow the patterns
    assert md["llama.block_count"] == 30 and md.summary() == {"llama.block_count": 30,
                                                              "tokenizer.ggml.eot_token_id": 7}


@pytest.mark.parametrize("pre,name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
])
def test_pre_tokenizer_is_picked_from_its_structure(pre, name, tmp_path):
    assert pre_tokenizer_name(pre, tmp_path) == name


@pytest.mark.parametrize("pre", [
    None,
    {"type": "Metaspace", "replacement": "▁"},
    {"type": "ByteLevel", "use_regex": False},
    {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\d+"}},
                                           {"type": "ByteLevel", "use_regex": False}]},
])
def test_unknown_pre_tokenizers_are_refused_not_guessed(pre, tmp_path):
    with pytest.raises(IncompatibleLayerError, match="no llama.cpp equivalent"):
        pre_tokenizer_name(pre, tmp_path)


def test_tokenizer_json_conversion_types_and_padding(tiny_gemma3_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_gemma3_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    entries, info = from_tokenizer_json(folder, 330, cfg)  # 10 more rows than tokens: padded
    e = {k: v for k, v, *_ in entries}
    assert info["tokenizer_source"] == "built from tokenizer.json"
    assert e["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert e["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # special added tokens: CONTROL
    assert e["tokenizer.ggml.tokens"][325] == "[PAD325]" and e["tokenizer.ggml.token_type"][325] == 5
    assert e["tokenizer.ggml.add_bos_token"] is True and e["tokenizer.ggml.bos_token_id"] == 1
    assert all(" " in m for m in e["tokenizer.ggml.merges"][:10])
    with pytest.raises(ArtifactError, match="outside the embedding"):
        from_tokenizer_json(folder, 100, cfg)
