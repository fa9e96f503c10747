"""Tokenizer and chat-template metadata, so that stock llama.cpp tokenizes and chats like the model.

Two sources, in this order:

1. The model came from a bundled GGUF (SmolLM2, Gemma3): its ``tokenizer.*`` keys are copied
   verbatim, types included. The tokenizer transformers rebuilt from that GGUF is an approximation
   (SmolLM2's digit-splitting ``smollm`` pre-tokenizer becomes plain byte-level), so the original
   keys are the better description. A derived artifact (quantized, pruned) is traced back to its
   bundled GGUF by its tokenizer.json: stages copy it unchanged, so equal bytes mean the same vocabulary.
2. Otherwise the tokenizer files are converted. A byte-level BPE becomes ``tokenizer.ggml.model = gpt2``
   with the vocabulary, the merges and token types (added special tokens are CONTROL, other added tokens
   USER_DEFINED, ids without a token become ``[PAD{id}]`` UNUSED, as llama.cpp's converter does). A
   SentencePiece vocabulary (Llama 2, Mistral, Phi-3, Gemma: tokenizer.model, or tokenizer.json's BPE with
   byte fallback) becomes ``llama`` with scores, BYTE/CONTROL/UNKNOWN types and ``add_space_prefix``.

The byte-level pre-tokenizer (``tokenizer.ggml.pre``) is picked from the structure of tokenizer.json's
pre_tokenizer, never guessed: a lone ``ByteLevel(use_regex=True)`` is exactly GPT-2's split regex, which
llama.cpp calls ``gpt-2``; ``Digits(individual) + ByteLevel`` is ``smollm``; the Llama-3 split regex +
``ByteLevel(use_regex=False)`` is ``llama-bpe``, the same regex with single digits ``qwen2`` (Qwen2, 2.5,
3). llama.cpp's own converter instead hashes the ids a known model's tokenizer gives for a probe text
(``get_vocab_base_pre``): that names vocabularies it has seen, not a new one trained with a known regex
(our tests' tiny ones, a domain tokenizer); the regex is what llama.cpp applies for each name, so it is
what is compared here. Anything else is refused, naming the pre-tokenizer, because a wrong regex tokenizes most text
identically and fails silently on the rest (digits, contractions). The validation tokenizes a multilingual
probe (code, digit and whitespace runs) with both and compares anyway.

    >>> entries, info = tokenizer_metadata(src, vocab_size=49152)
    >>> info["tokenizer_source"]
    'copied from SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, TokenType

from compress.errors import ArtifactError, IncompatibleLayerError, MissingBackendError
from compress.families import TOKENIZER_NAMES, tokenizer_kind
from compress.jsonfile import read_json

from .source import ExportSource
from .spm import added_type, has_sp_model, sentencepiece_vocab

log = logging.getLogger(__name__)

Entry = tuple[str, Any, GGUFValueType | None, GGUFValueType | None]  # key, value, type, element type

_QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def tokenizer_metadata(src: ExportSource, vocab_size: int) -> tuple[list[Entry], dict[str, Any]]:
    """Entries for :class:`.metadata.Metadata` plus a short description for the manifest."""
    gguf_path = source_gguf(src)
    if gguf_path is not None:
        entries = copy_from_gguf(gguf_path)
        info = {"tokenizer_source": f"copied from {gguf_path.name}"}
    else:
        entries, info = from_tokenizer_json(src.folder, vocab_size, src.config)
    tokens = next((v for k, v, *_ in entries if k == "tokenizer.ggml.tokens"), None)
    if tokens is None or len(tokens) != vocab_size:
        raise ArtifactError(f"{src.folder}: the tokenizer has {0 if tokens is None else len(tokens)} tokens but "
                            f"the embedding has {vocab_size} rows")
    info["chat_template"] = any(k == "tokenizer.chat_template" for k, *_ in entries)
    info["tokenizer_model"] = next(v for k, v, *_ in entries if k == "tokenizer.ggml.model")
    info["tokenizer_pre"] = next((v for k, v, *_ in entries if k == "tokenizer.ggml.pre"), None)
    return entries, info


def source_gguf(src: ExportSource) -> Path | None:
    """The bundled GGUF this artifact's tokenizer came from, if any."""
    from compress.bundled import BUNDLED, bundled_gguf
    from compress.fetch import cached_folder
    from compress.manifest import is_complete

    if getattr(src, "gguf_input", None) is not None:  # a GGUF input: llama.cpp's own vocabulary, as it was
        return src.gguf_input
    m = src.manifest
    read_from = _gguf_it_was_read_from(m)
    if read_from is not None:
        return read_from
    if m is not None and m.stage == "fetch" and m.report.get("source_gguf"):
        return bundled_gguf(m.config["name"])
    mine = _digest(src.folder / "tokenizer.json")
    if mine is None:
        return None
    for name in BUNDLED:
        folder = cached_folder(name)
        if folder.resolve() == src.folder.resolve() or not is_complete(folder):
            continue
        if _digest(folder / "tokenizer.json") == mine:
            try:
                return bundled_gguf(name)
            except MissingBackendError as e:
                log.warning("tokenizer matches %s but its GGUF is unavailable (%s); converting tokenizer.json", name, e)
                return None
    return None


def _gguf_it_was_read_from(m) -> Path | None:
    """The .gguf an artifact was made from (``compress quantize model.gguf``, an import), when it is still there
    with the same content: its vocabulary is llama.cpp's own, where the tokenizer transformers converted from it
    may carry tokens of its own (``<|endoftext|>`` past the last row on a vocabulary without one)."""
    if m is None or not str(m.input_id or "").startswith("gguf:"):
        return None
    name = m.report.get("source_gguf") or m.report.get("input")
    path = Path(name).expanduser() if isinstance(name, str) else None
    if path is None or path.suffix != ".gguf" or not path.is_file():
        return None
    from compress.manifest import file_digest

    return path if "gguf:" + file_digest(path)[:16] == m.input_id else None


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_from_gguf(path: Path) -> list[Entry]:
    """Every ``tokenizer.*`` key of a GGUF file, with its own types."""
    reader = GGUFReader(path)
    out: list[Entry] = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        out.append((key, field.contents(), vtype, sub))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ArtifactError(f"{path}: no tokenizer.ggml.tokens to copy")
    return out


def from_tokenizer_json(folder: Path, vocab_size: int, config: dict[str, Any]) -> tuple[list[Entry], dict[str, Any]]:
    """Byte-level BPE -> llama.cpp's ``gpt2`` model; SentencePiece (tokenizer.model, or a tokenizer.json BPE
    with byte fallback, as Llama 2, Mistral and Gemma ship) -> its ``llama`` model with scores and types."""
    path = folder / "tokenizer.json"
    kind, desc = tokenizer_kind(folder)
    if kind is None:
        raise ArtifactError(f"{folder}: no tokenizer.json or tokenizer.model (GGUF needs the vocabulary)")
    if kind not in ("bpe", "spm"):
        raise IncompatibleLayerError(f"{folder}: tokenizer is {desc} and cannot be converted; supported: "
                                     f"{', '.join(TOKENIZER_NAMES.values())}, or a model imported from a bundled GGUF")
    tj = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"model": {}, "added_tokens": []}
    model = tj["model"]
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    if kind == "spm":
        tokens, scores, types, prefix = sentencepiece_vocab(folder, tj, vocab_size)
        entries: list[Entry] = [
            ("tokenizer.ggml.model", "llama", None, None),
            ("tokenizer.ggml.pre", "default", None, None),
            ("tokenizer.ggml.tokens", tokens, None, None),
            ("tokenizer.ggml.scores", scores, None, None),
            ("tokenizer.ggml.token_type", types, None, None),
            ("tokenizer.ggml.add_space_prefix", prefix, None, None),
        ]
        vocab = {t: i for i, t in enumerate(tokens)}
        info = {"tokenizer_source": f"built from {'tokenizer.model' if has_sp_model(folder) else 'tokenizer.json'} "
                                    "(SentencePiece)"}
    else:
        pre = pre_tokenizer_name(tj.get("pre_tokenizer"), path)
        vocab = dict(model["vocab"])
        for content, t in added.items():
            vocab[content] = t["id"]
        tokens = _by_id(vocab, vocab_size, path)
        types = [int(TokenType.UNUSED) if t is None else int(added_type(added[t])) if t in added
                 else int(TokenType.NORMAL) for t in tokens]
        tokens = [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        entries = [
            ("tokenizer.ggml.model", "gpt2", None, None),
            ("tokenizer.ggml.pre", pre, None, None),
            ("tokenizer.ggml.tokens", tokens, None, None),
            ("tokenizer.ggml.token_type", types, None, None),
        ]
        if merges:
            entries.append(("tokenizer.ggml.merges", merges, None, None))
        info = {"tokenizer_source": "built from tokenizer.json"}
    tcfg = _read_optional_json(folder / "tokenizer_config.json")
    for role in ("bos", "eos", "unk", "pad"):
        tid = _special_id(tcfg.get(f"{role}_token"), vocab, config.get(f"{role}_token_id"))
        if tid is not None:
            entries.append((f"tokenizer.ggml.{role}_token_id", tid, None, None))
    add_bos, add_eos = _template_adds(tj.get("post_processor"))
    entries.append(("tokenizer.ggml.add_bos_token", bool(tcfg.get("add_bos_token", add_bos)), None, None))
    entries.append(("tokenizer.ggml.add_eos_token", bool(tcfg.get("add_eos_token", add_eos)), None, None))
    template = chat_template(folder, tcfg)
    if template:
        entries.append(("tokenizer.chat_template", template, None, None))
    return entries, info


def _by_id(vocab: dict[str, int], vocab_size: int, where: Path) -> list[str | None]:
    tokens: list[str | None] = [None] * vocab_size
    for tok, i in vocab.items():
        if not 0 <= i < vocab_size:
            raise ArtifactError(f"{where}: token {tok!r} has id {i}, outside the embedding's {vocab_size} rows")
        tokens[i] = tok
    return tokens


def pre_tokenizer_name(pt: dict | None, where: Path) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer (see the module docstring for why these)."""
    seq = (pt.get("pretokenizers") or []) if pt and pt.get("type") == "Sequence" else ([pt] if pt else [])
    kinds = [p.get("type") for p in seq]
    if kinds == ["ByteLevel"] and seq[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and seq[0].get("individual_digits") and seq[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not seq[1].get("use_regex", True) \
            and (seq[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"
    if kinds == ["Split", "ByteLevel"] and not seq[1].get("use_regex", True) \
            and (seq[0].get("pattern") or {}).get("Regex") == _QWEN2_SPLIT:
        return "qwen2"  # Qwen2/2.5/3: the Llama-3 regex with single digits
    raise IncompatibleLayerError(
        f"{where}: pre-tokenizer {' + '.join(map(str, kinds)) or 'none'} has no llama.cpp equivalent known to "
        f"compress; supported: ByteLevel (gpt-2), Digits + ByteLevel (smollm), Llama-3 Split + ByteLevel (llama-bpe), "
        f"Qwen2 Split + ByteLevel (qwen2)")


def _special_id(token: Any, vocab: dict[str, int], fallback: Any) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and token in vocab:
        return vocab[token]
    if isinstance(fallback, list):
        fallback = fallback[0] if fallback else None
    return fallback if isinstance(fallback, int) and not isinstance(fallback, bool) else None


def _template_adds(pp: dict | None) -> tuple[bool, bool]:
    """Whether the post-processor puts a special token first / last (BOS / EOS by default)."""
    if not pp:
        return False, False
    if pp.get("type") == "Sequence":
        results = [_template_adds(p) for p in pp.get("processors", [])]
        return any(r[0] for r in results), any(r[1] for r in results)
    if pp.get("type") != "TemplateProcessing":
        return False, False
    single = pp.get("single") or []
    return (bool(single) and "SpecialToken" in single[0]), (bool(single) and "SpecialToken" in single[-1])


def chat_template(folder: Path, tcfg: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = tcfg.get("chat_template")
    if isinstance(t, list):  # named templates: llama.cpp takes one, the default
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    return t if isinstance(t, str) and t else None


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, ArtifactError, problem="corrupt")
    return data if isinstance(data, dict) else {}
