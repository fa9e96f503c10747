"""SentencePiece vocabularies for llama.cpp's ``llama`` tokenizer model (Llama 2, Mistral, Phi-3, Gemma).

    tokens, scores, types, add_space_prefix = sentencepiece_vocab(folder, tokenizer_json, vocab_size)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gguf import TokenType

from compress.errors import ArtifactError, optional_import


def added_type(t: dict[str, Any]) -> TokenType:
    """An added token's type: CONTROL if special, USER_DEFINED otherwise (as llama.cpp's converter does)."""
    return TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED


def has_sp_model(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file()


_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def sentencepiece_vocab(folder: Path, tj: dict[str, Any], vocab_size: int
                        ) -> tuple[list[str], list[float], list[int], bool]:
    """(tokens, scores, token types, add_space_prefix) for llama.cpp's SentencePiece tokenizer.

    llama.cpp merges the adjacent pair whose joined piece has the highest score. With tokenizer.model the
    scores are SentencePiece's own (what llama.cpp's converter reads); from a tokenizer.json BPE they are
    minus the rank of the merge that makes each piece, which orders the merges as the BPE model applies them.
    Byte pieces ``<0xNN>`` are BYTE (the fallback for characters outside the vocabulary), added special
    tokens CONTROL, other added tokens USER_DEFINED, ids without a piece UNUSED."""
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    model = tj.get("model") or {}
    unk = model.get("unk_token")
    tokens: list[str | None] = [None] * vocab_size
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    if has_sp_model(folder):
        spm = optional_import("sentencepiece", "reading tokenizer.model needs sentencepiece", "sentencepiece")
        sp = spm.SentencePieceProcessor()
        sp.LoadFromFile(str(folder / "tokenizer.model"))
        for i in range(min(sp.vocab_size(), vocab_size)):
            tokens[i], scores[i] = sp.IdToPiece(i), float(sp.GetScore(i))
            types[i] = int(TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i) else
                           TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i) else TokenType.NORMAL)
    else:
        rank = {}
        for r, m in enumerate(model.get("merges", [])):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            rank.setdefault(a + b, r)
        for tok, i in model.get("vocab", {}).items():
            if 0 <= i < vocab_size:
                tokens[i], scores[i] = tok, -float(rank.get(tok, 0))
                types[i] = int(TokenType.UNKNOWN if tok == unk else TokenType.BYTE if _BYTE.fullmatch(tok)
                               else TokenType.NORMAL)
    for content, t in added.items():
        i = t["id"]
        if not 0 <= i < vocab_size:
            raise ArtifactError(f"{folder}: added token {content!r} has id {i}, outside the embedding's "
                                f"{vocab_size} rows")
        if types[i] in (int(TokenType.UNKNOWN), int(TokenType.BYTE)) and tokens[i] == content:
            continue  # <unk> and byte pieces keep their SentencePiece type
        tokens[i], scores[i], types[i] = content, 0.0 if types[i] == int(TokenType.CONTROL) else -1000.0, \
            int(added_type(t))
    out = [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)]
    return out, scores, types, _adds_space_prefix(tj)


def _adds_space_prefix(tj: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2, Mistral: yes; Gemma: no)."""
    text = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")])
    if '"Prepend"' in text:
        return True
    for node in _walk([tj.get("pre_tokenizer")]):
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never") != "never"
    return not tj.get("normalizer") and not tj.get("pre_tokenizer")  # bare tokenizer.model: SentencePiece's default


def _walk(nodes):
    for n in nodes:
        if isinstance(n, dict):
            yield n
            yield from _walk(n.get("pretokenizers") or n.get("normalizers") or [])
