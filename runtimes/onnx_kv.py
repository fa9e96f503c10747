"""The KV cache of an ``export-onnx`` decoder: one fixed-size buffer per generation, bound as both past and present.

    layout = kv_layout(session)                   # names, shapes, element type, whether the graph may share
    cache = SharedKVCache(session, layout, capacity=len(prompt) + max_new_tokens - 1)
    row = cache.feed(prompt)                      # prefill: the last position's logits
    row = cache.feed([token])                     # one decode step, written in place

A prompt longer than :data:`PREFILL_CHUNK` tokens is fed in consecutive runs of that many through the same buffer
(each run attends to the keys and values the runs before it wrote): the activations of one run are what a prefill
holds at once, instead of the whole prompt's.

onnxruntime's GroupQueryAttention treats a past/present pair bound to the same memory as one buffer of
``capacity`` positions (its CPU kernel compares the two pointers): it writes the new positions' keys and values
after the ``seqlens_k + 1 - n`` already there and attends to the first ``seqlens_k + 1`` only. Our graph derives
``seqlens_k`` (sum - 1) and ``total_sequence_length`` (length) from ``attention_mask``, so feeding a mask of
ones as long as the valid prefix is all it needs. The buffers are allocated once per generation and bound once
(IOBinding); a step costs its own tokens. The growing path (``present`` fed back as the next ``past``) makes the
kernel allocate, zero and copy the whole cache of every layer at every step: work and memory traffic that grow
with the context. onnxruntime-genai runs the same graph this way with ``past_present_share_buffer: true``.

Whether a graph may share is declared by the export in the model's metadata (:data:`KV_META`, written after
checking that every ``present`` output comes straight from the GroupQueryAttention node that reads the matching
``past`` input); the runtime reads it from the session, which costs nothing, instead of parsing the model file
in the process whose speed and memory are measured. A graph without it (an export made before the buffer was
shared) runs the growing path. A folder onnxruntime-genai's model builder wrote declares sharing to its own
generator instead (``search.past_present_share_buffer`` in genai_config.json, the same GroupQueryAttention
contract), and leaves the head size symbolic (``kv_cache_dim``): the runtime passes both from there
(``share``, ``dims``). Such a graph has no ``logits_to_keep`` either: its prefill returns every position's logits.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from compress.errors import ConfigError

# Prefill in runs of this many tokens. One 2,048-token run holds GroupQueryAttention's [heads, 2,048, 2,048]
# scores and the MLP's [2,048, 4 x hidden] activations at once: the prefill added 207 MiB to SmolLM2 (91 of them
# the KV cache) and 239 to Gemma3 (73), in runs of 256 106 and 80, and the peak after a 2,048-token prefill fell
# 427 -> 325 MiB (SmolLM2) and 661 -> 548 (Gemma3, whose load peak it then is); runs of 128 were no better, 512
# worse (benchmarks/RESULTS.md, "ONNX memory (#14)"). A prompt of up to this many tokens runs as before, in one.
PREFILL_CHUNK = 256
KV_META = "compress.kv_cache"  # model metadata: {"share_buffer": bool, "dtype": "float32" | ...}
PAST, PRESENT = "past_key_values.", "present."

# onnxruntime's type strings for the KV element types our graphs use
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8}


@dataclasses.dataclass(frozen=True)
class KVLayout:
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]  # (kv_heads, last dim) of each past input, in past_names' order
    dtype: type  # numpy element type of the cache
    shared: bool  # the export declared that past and present may be one buffer
    vocab: int | None  # the logits' last dimension, where the graph fixes it
    keeps_last: bool = True  # the graph takes logits_to_keep (else it returns logits for every position fed)

    @property
    def bytes_per_position(self) -> float:
        """Keys and values one position adds to the cache, over all layers."""
        return float(sum(heads * dim for heads, dim in self.shapes) * np.dtype(self.dtype).itemsize)


def kv_layout(session, *, dims: tuple[int, int] | None = None, share: bool | None = None) -> KVLayout:
    """What the session's graph says about its cache: names and shapes from its inputs, the sharing declaration
    from its metadata (:data:`KV_META`). ``dims`` (kv_heads, head_size) stand in for dimensions the graph leaves
    symbolic, and ``share`` for a missing declaration, where the folder says them elsewhere (genai_config.json)."""
    inputs = {i.name: i for i in session.get_inputs()}
    past = tuple(n for n in inputs if n.startswith(PAST))
    present = tuple(n.replace(PAST, PRESENT, 1) for n in past)
    shapes = tuple((_dim(inputs[n], 1, dims), _dim(inputs[n], 3, dims)) for n in past)
    types = {inputs[n].type for n in past} or {"tensor(float)"}
    if len(types) != 1 or next(iter(types)) not in _NUMPY:
        raise ConfigError(f"KV cache inputs of element types {sorted(types)}: the onnxruntime runtime runs "
                          f"{', '.join(_NUMPY)}")
    meta = session.get_modelmeta().custom_metadata_map.get(KV_META)
    declared = json.loads(meta) if meta else {}
    outputs = {o.name: o for o in session.get_outputs()}
    vocab = outputs["logits"].shape[-1] if "logits" in outputs else None
    shared = bool(declared.get("share_buffer") if meta else share) and bool(past) and all(n in outputs for n in present)
    # our exports give logits_to_keep a default (an initializer that is also an input), which onnxruntime lists
    # among the overridable initializers, not the inputs: missed, every prefill returned all positions' logits
    # (2,048 x 262,144 floats = 2 GiB for Gemma3 at a 2,048-token prompt)
    defaults = {i.name for i in session.get_overridable_initializers()}
    keeps = "logits_to_keep" in inputs or "logits_to_keep" in defaults
    return KVLayout(past, present, shapes, _NUMPY[types.pop()], shared, vocab if isinstance(vocab, int) else None,
                    keeps)


def check_chunk(chunk: int | None) -> int:
    """A prefill chunk length: a positive number of tokens, or 0 (None) for a prompt in one run."""
    if chunk is None:
        return 0
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ConfigError(f"prefill chunk {chunk!r}: a number of tokens >= 1, or 0 for a prompt in one run")
    return chunk


def _dim(node, axis: int, dims: tuple[int, int] | None) -> int:
    """Axis 1 (KV heads) or 3 (head size) of a past input: the graph's number, else ``dims``' (see kv_layout)."""
    value = node.shape[axis]
    if isinstance(value, int) and value > 0:
        return value
    if dims is None:
        raise ConfigError(f"{node.name}: dimension {axis} is {value!r}, not a number; the onnxruntime runtime needs "
                          "the KV heads and head size fixed in the graph or given beside it")
    return int(dims[0 if axis == 1 else 1])


class SharedKVCache:
    """One generation's cache: a ``[1, kv_heads, capacity, head_dim]`` buffer per past input, allocated here and
    bound as both that input and its ``present`` output for every step; ``feed`` writes in place.

    ``length`` is how many positions hold keys and values; :meth:`truncate` forgets the tail (the next ``feed``
    overwrites it), which is how a chat keeps a common prefix without copying anything. ``chunk``: the most
    tokens one run of the session takes (:data:`PREFILL_CHUNK`; 0 or None: a whole ``feed`` in one run).
    """

    def __init__(self, session, layout: KVLayout, capacity: int, chunk: int | None = PREFILL_CHUNK) -> None:
        import onnxruntime as ort

        if not layout.shared:
            raise ConfigError("this ONNX graph does not declare a shared past/present KV buffer "
                              f"(model metadata {KV_META!r}); export it again to get one")
        if capacity < 1:
            raise ConfigError(f"KV buffer capacity {capacity}: must be at least 1 position")
        self.chunk = check_chunk(chunk)
        self._ort, self.session, self.capacity, self.length = ort, session, int(capacity), 0
        self.keeps_last = layout.keeps_last
        self.binding = session.io_binding()
        self.buffers = []
        for past, present, (heads, dim) in zip(layout.past_names, layout.present_names, layout.shapes):
            buf = ort.OrtValue.ortvalue_from_shape_and_type([1, heads, self.capacity, dim], layout.dtype)
            self.binding.bind_ortvalue_input(past, buf)
            self.binding.bind_ortvalue_output(present, buf)
            self.buffers.append(buf)
        # a decode step's inputs live in arrays bound once; onnxruntime reads CPU numpy memory in place
        self._mask = np.ones((1, self.capacity), np.int64)
        self._token = np.zeros((1, 1), np.int64)
        self._token_value = ort.OrtValue.ortvalue_from_numpy(self._token)
        self._token_bound = False  # input_ids is bound to _token (else to a prompt's ids)
        if self.keeps_last:
            self._keep = ort.OrtValue.ortvalue_from_numpy(np.array(1, np.int64))  # the last position's logits only
            self.binding.bind_ortvalue_input("logits_to_keep", self._keep)
        # logits_to_keep 1 (or a one-token step of a graph without it): [1, 1, vocab], so one array takes every
        # such step's; it is bound after every present output, so logits is always the last output bound
        self._logits = self._logits_value = None
        if layout.vocab is not None:
            self._logits = np.empty((1, 1, layout.vocab), np.float32)
            self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
            self.binding.bind_ortvalue_output("logits", self._logits_value)
        self._logits_bound = self._logits is not None  # logits is bound to that array now

    def feed(self, ids: Sequence[int]) -> np.ndarray:
        """Run ``ids`` after the ``length`` cached positions, in runs of at most ``chunk`` tokens; the last
        position's logits [vocab] (a copy)."""
        ids = list(ids)
        total = self.length + len(ids)
        if not ids:
            raise ConfigError("no token ids to feed")
        if total > self.capacity:
            raise ConfigError(f"sequence of {total} tokens does not fit the KV buffer of {self.capacity} positions")
        step = self.chunk or len(ids)
        for start in range(0, len(ids), step):
            row = self._run(ids[start:start + step])
        return row

    def _run(self, ids: list[int]) -> np.ndarray:
        """One run of the session: ``ids`` after the ``length`` cached positions (checked by :meth:`feed`)."""
        total = self.length + len(ids)
        value = self._ort.OrtValue.ortvalue_from_numpy
        if len(ids) == 1:
            self._token[0, 0] = ids[0]
            if not self._token_bound:
                self.binding.bind_ortvalue_input("input_ids", self._token_value)
                self._token_bound = True
        else:
            self.binding.bind_ortvalue_input("input_ids", value(np.asarray([ids], dtype=np.int64)))
            self._token_bound = False
        # ones over the valid prefix: the graph reads seqlens_k and total_sequence_length from it
        self.binding.bind_ortvalue_input("attention_mask", value(self._mask[:, :total]))
        one_row = self._logits is not None and (self.keeps_last or len(ids) == 1)
        if one_row and not self._logits_bound:
            self.binding.bind_ortvalue_output("logits", self._logits_value)
            self._logits_bound = True
        elif not one_row:
            # an output bound without memory keeps the tensor of the first run; bound again, it is made anew
            # (a prefill without logits_to_keep: every position's row)
            self.binding.bind_output("logits")
            self._logits_bound = False
        self.session.run_with_iobinding(self.binding)
        self.length = total
        if one_row:
            return self._logits[0, -1].copy()
        return self.binding.get_outputs()[-1].numpy()[0, -1]  # outputs come in the order they were bound

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions; the next :meth:`feed` continues from there."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length
