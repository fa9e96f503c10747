"""The tokenizer of a model folder (an ONNX export, a builder's folder), read from tokenizer.json with the
``tokenizers`` library alone: no transformers, so no torch.

transformers' AutoTokenizer imports torch first (+163 MiB anonymous and about 5 s before a tokenizer is read);
runtimes that run token ids (onnxruntime, onnxruntime-genai) and a chat on a phone-sized budget should not pay
that. The ids are transformers' own for the files our exports carry: AutoTokenizer of transformers 5 builds its
fast tokenizer from the same tokenizer.json, post-processor included (BOS first for Gemma, not for SmolLM2; it
ignores a tokenizer_config.json ``add_bos_token`` that disagrees), and tests/test_tokenizer.py compares both on
SmolLM2's, Gemma3's and the tiny tokenizers. A folder without tokenizer.json (sentencepiece's tokenizer.model only)
falls back to AutoTokenizer, which is the one reader of that format.

    tok = load_export_tokenizer(Path("runs/demo/export-onnx-int4"))
    tok("Hello").input_ids                        # as transformers: special tokens (Gemma's BOS) included
    tok.encode("Hello", add_special_tokens=False), tok.decode([19556]), tok.chat_template
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .jsonfile import read_json

log = logging.getLogger(__name__)
TOKENIZER_JSON = "tokenizer.json"


class Encoded(dict):
    """What calling a tokenizer returns, read as transformers' BatchEncoding is: ``enc.input_ids`` or
    ``enc["input_ids"]``."""

    @property
    def input_ids(self) -> list[int]:
        return self["input_ids"]


class ExportTokenizer:
    """The tokenizer operations our runtimes, harness and chat use, over a ``tokenizers.Tokenizer``, with
    transformers' signatures (``tok(text, add_special_tokens=True)``, ``encode``, ``decode``, ``bos_token_id``)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(folder / TOKENIZER_JSON))
        except Exception as e:  # tokenizers raises plain Exception subclasses for malformed JSON
            raise ArtifactError(f"{folder / TOKENIZER_JSON}: cannot be read ({str(e).splitlines()[0][:160]})") \
                from None
        _return_freed_heap()
        cfg = _json(folder / "tokenizer_config.json")
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.unk_token_id = self.token_id(_token_text(cfg.get("unk_token")))
        self.bos_token_id = self.token_id(self.bos_token)
        self.eos_token_id = self.token_id(self.eos_token)
        template = folder / "chat_template.jinja"
        self.chat_template = template.read_text() if template.is_file() else cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: the default one, as transformers picks it
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            self.chat_template = named.get("default")
        # whether plain encoding puts BOS first (Gemma) is the post-processor's decision
        self.adds_bos = self.bos_token_id is not None and self._tok.encode("", add_special_tokens=True).ids[:1] == \
            [self.bos_token_id]

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return Encoded(input_ids=self.encode(text, add_special_tokens=add_special_tokens))

    def token_id(self, text: str | None) -> int | None:
        return self._tok.token_to_id(text) if text else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):  # transformers would batch a list; nothing here needs that
            raise ArtifactError(f"the tokenizer encodes one str at a time, not {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


class _AutoTokenizer:
    """Same surface over transformers' AutoTokenizer (folders without tokenizer.json)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        try:
            tok = self._tok = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"{folder}: cannot load the export's tokenizer ({str(e).splitlines()[0]})") from None
        self.bos_token, self.eos_token = tok.bos_token or "", tok.eos_token or ""
        self.bos_token_id, self.eos_token_id, self.unk_token_id = tok.bos_token_id, tok.eos_token_id, tok.unk_token_id
        self.chat_template = tok.chat_template
        self.adds_bos = tok.bos_token_id is not None and tok("")["input_ids"][:1] == [tok.bos_token_id]

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return Encoded(input_ids=self.encode(text, add_special_tokens=add_special_tokens))

    def token_id(self, text: str | None) -> int | None:
        tid = self._tok.convert_tokens_to_ids(text) if text else None
        return tid if isinstance(tid, int) and tid != self.unk_token_id else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def load_export_tokenizer(folder: Path):
    """The folder's tokenizer: tokenizer.json through ``tokenizers`` (no torch), else transformers'
    AutoTokenizer for a sentencepiece-only folder; ArtifactError where it holds neither.

    >>> load_export_tokenizer(Path("runs/q14/smollm2-onnx-int4-shared"))("Hi").input_ids
    [26843]
    """
    folder = Path(folder)
    if (folder / TOKENIZER_JSON).is_file():
        return ExportTokenizer(folder)
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.model").is_file():
        log.info("%s: no %s; reading the tokenizer with transformers (imports torch)", folder, TOKENIZER_JSON)
        return _AutoTokenizer(folder)
    raise ArtifactError(f"{folder}: the ONNX export holds no tokenizer (tokenizer.json); export it again")


def generation_eos(folder: Path) -> list[int]:
    """eos_token_id(s) from generation_config.json: instruct models often stop on several."""
    value = _json(folder / "generation_config.json").get("eos_token_id")
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _return_freed_heap() -> None:
    """Give the heap pages freed while parsing back to the system (glibc only; elsewhere nothing).

    tokenizers parses the whole tokenizer.json into an intermediate tree and frees it, but glibc keeps the freed
    pages: Gemma3's 33 MB file (262,144 tokens, 514,906 merges) left 288 MiB more anonymous memory resident,
    94 after ``malloc_trim(0)`` (SmolLM2's: 30 -> 13). The parse's own peak (+356 MiB for Gemma3) stays in the
    high-water mark: runtimes read the tokenizer only when text is asked for."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, ArtifactError, problem="corrupt JSON")
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # AddedToken written out in full
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""
