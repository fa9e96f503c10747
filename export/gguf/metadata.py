"""GGUF metadata, type-checked before it reaches gguf-py's writer.

gguf-py packs whatever it is given: a rope_theta that arrived as a string, a negative head count or a
NaN epsilon become a file llama.cpp misreads or refuses with a message about the file, not about
the model. Every key therefore has a declared GGUF type (:data:`SCHEMA`, patterns over the key), and
:meth:`Metadata.add` checks the value against it (range, finiteness, element types of arrays) and
names the key and the source of the value when it does not fit.

    >>> md = Metadata()
    >>> md.add("llama.block_count", 30)
    >>> md.add("llama.block_count", -1)
    Traceback (most recent call last):
    compress.errors.ArtifactError: GGUF metadata llama.block_count: expected UINT32, got -1
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Iterator

from gguf import GGUFValueType as T
from gguf import GGUFWriter

from compress.errors import ArtifactError

A = "*"  # any architecture name

# key pattern -> (type, element type for arrays). First match wins, so specific patterns go first.
SCHEMA: tuple[tuple[str, T, T | None], ...] = (
    ("general.file_type", T.UINT32, None),
    ("general.quantization_version", T.UINT32, None),
    ("general.*", T.STRING, None),
    (f"{A}.rope.scaling.factor", T.FLOAT32, None),
    (f"{A}.rope.scaling.attn_factor", T.FLOAT32, None),
    (f"{A}.rope.scaling.type", T.STRING, None),
    (f"{A}.rope.scaling.original_context_length", T.UINT32, None),
    (f"{A}.rope.freq_base*", T.FLOAT32, None),
    (f"{A}.attention.layer_norm_rms_epsilon", T.FLOAT32, None),
    (f"{A}.context_length", T.UINT32, None),
    (f"{A}.embedding_length", T.UINT32, None),
    (f"{A}.block_count", T.UINT32, None),
    (f"{A}.feed_forward_length", T.UINT32, None),
    (f"{A}.vocab_size", T.UINT32, None),
    (f"{A}.rope.dimension_count", T.UINT32, None),
    (f"{A}.attention.head_count*", T.UINT32, None),
    (f"{A}.attention.key_length", T.UINT32, None),
    (f"{A}.attention.value_length", T.UINT32, None),
    (f"{A}.attention.sliding_window", T.UINT32, None),
    (f"{A}.attention.sliding_window_pattern", T.UINT32, None),
    ("tokenizer.ggml.model", T.STRING, None),
    ("tokenizer.ggml.pre", T.STRING, None),
    ("tokenizer.ggml.tokens", T.ARRAY, T.STRING),
    ("tokenizer.ggml.merges", T.ARRAY, T.STRING),
    ("tokenizer.ggml.scores", T.ARRAY, T.FLOAT32),
    ("tokenizer.ggml.token_type", T.ARRAY, T.INT32),
    ("tokenizer.ggml.*_token_id", T.UINT32, None),
    ("tokenizer.ggml.add_*", T.BOOL, None),
    ("tokenizer.chat_template", T.STRING, None),
)

_INT_RANGES = {T.UINT8: (0, 2**8), T.INT8: (-2**7, 2**7), T.UINT16: (0, 2**16), T.INT16: (-2**15, 2**15),
               T.UINT32: (0, 2**32), T.INT32: (-2**31, 2**31), T.UINT64: (0, 2**64), T.INT64: (-2**63, 2**63)}


def schema_type(key: str) -> tuple[T, T | None] | None:
    for pattern, vtype, sub in SCHEMA:
        if fnmatch.fnmatchcase(key, pattern):
            return vtype, sub
    return None


def check_value(key: str, value: Any, vtype: T, sub: T | None = None, where: str = "") -> Any:
    """Return ``value`` if it fits ``vtype`` (arrays: every element fits ``sub``); raise ArtifactError."""

    def bad(got: Any) -> ArtifactError:
        shown = repr(got) if len(repr(got)) < 80 else repr(got)[:77] + "..."
        src = f" (from {where})" if where else ""
        want = f"ARRAY of {sub.name}" if vtype == T.ARRAY and sub is not None else vtype.name
        return ArtifactError(f"GGUF metadata {key}: expected {want}, got {shown}{src}")

    if vtype in _INT_RANGES:
        lo, hi = _INT_RANGES[vtype]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
            raise bad(value)
    elif vtype in (T.FLOAT32, T.FLOAT64):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(value)
        value = float(value)
    elif vtype == T.BOOL:
        if not isinstance(value, bool):
            raise bad(value)
    elif vtype == T.STRING:
        if not isinstance(value, str):
            raise bad(value)
    elif vtype == T.ARRAY:
        if sub is None or not isinstance(value, (list, tuple)) or not value:
            raise bad(value)
        for i, item in enumerate(value):
            try:
                check_value(f"{key}[{i}]", item, sub)
            except ArtifactError:
                raise bad(item) from None
        value = list(value)
    else:
        raise bad(value)
    return value


class Metadata:
    """Ordered, checked GGUF key/values; ``general.architecture`` is added by the writer itself."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, T, T | None]] = {}

    def add(self, key: str, value: Any, vtype: T | None = None, sub: T | None = None, *, where: str = "") -> None:
        """Add a key; its type comes from :data:`SCHEMA` unless given (keys copied from another GGUF)."""
        declared = schema_type(key)
        if vtype is None:
            if declared is None:
                raise ArtifactError(f"GGUF metadata {key}: no declared type (add it to the schema)")
            vtype, sub = declared
        elif declared is not None and (vtype, sub) != declared:
            raise ArtifactError(f"GGUF metadata {key}: {vtype.name} given where {declared[0].name} is declared"
                                + (f" (from {where})" if where else ""))
        self._items[key] = (check_value(key, value, vtype, sub, where), vtype, sub)

    def update(self, values: dict[str, Any], *, where: str = "") -> None:
        for k, v in values.items():
            self.add(k, v, where=where)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __getitem__(self, key: str) -> Any:
        return self._items[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def write_to(self, writer: GGUFWriter) -> None:
        for key, (value, vtype, sub) in self._items.items():
            writer.add_key_value(key, value, vtype, sub_type=sub)

    def summary(self) -> dict[str, Any]:
        """The scalar keys, for the manifest (token lists and the chat template are too long to repeat)."""
        return {k: v for k, (v, t, _) in self._items.items() if t != T.ARRAY and k != "tokenizer.chat_template"}
