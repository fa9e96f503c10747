"""The tokenizer of an ONNX export, read with the ``tokenizers`` library alone.

transformers' AutoTokenizer takes about 5 s and 170 MB more (it imports torch) for the same
tokenizer.json; a chat on a phone-sized budget should not pay that. Folders without a tokenizer.json
(sentencepiece-only) fall back to AutoTokenizer.

    tok = load_export_tokenizer(Path("runs/demo/export-onnx-int4"))
    tok.encode("Hello"), tok.decode([19556]), tok.chat_template
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..jsonfile import read_json


class ExportTokenizer:
    """The few tokenizer operations a chat needs, over a ``tokenizers.Tokenizer``."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises plain Exception subclasses for malformed JSON
            raise ArtifactError(f"{folder / 'tokenizer.json'}: cannot be read ({str(e).splitlines()[0][:160]})") \
                from None
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

    def token_id(self, text: str | None) -> int | None:
        return self._tok.token_to_id(text) if text else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


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

    def token_id(self, text: str | None) -> int | None:
        tid = self._tok.convert_tokens_to_ids(text) if text else None
        return tid if isinstance(tid, int) and tid != self.unk_token_id else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_export_tokenizer(folder: Path):
    if (folder / "tokenizer.json").is_file():
        return ExportTokenizer(folder)
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.model").is_file():
        return _AutoTokenizer(folder)
    raise ArtifactError(f"{folder}: the ONNX export holds no tokenizer (tokenizer.json); export it again")


def generation_eos(folder: Path) -> list[int]:
    """eos_token_id(s) from generation_config.json: instruct models often stop on several."""
    value = _json(folder / "generation_config.json").get("eos_token_id")
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, ArtifactError, problem="corrupt JSON")
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # AddedToken written out in full
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""
