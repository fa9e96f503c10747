"""The decoder's KV cache as the export declares it: its element type (``kv_dtype``) and whether the runtime may
bind one fixed-size buffer as both ``past_key_values.*`` and ``present.*``.

    kv = declare_kv(model, "float16")     # -> {"share_buffer": True, "dtype": "float16"}, also in the metadata

onnxruntime's CPU GroupQueryAttention takes the cache in its own element type (``T_CACHE``) beside the query's
(``T``): a float32 query with a float32 or float16 cache (measured on onnxruntime 1.32: same outputs as a float32
cache up to float16 rounding of the stored keys and values). float16 halves the cache's memory, but the CPU
kernel converts every cached row back to float32 for every query head at every step: one SmolLM2-shaped layer
took 2.1 ms a decode step at a 2048-token context against 0.9 ms with float32 (shared buffer, 1 thread, shared
machine) — a memory option, not a speed one. Its int8/4-bit caches need static ``k_scale``/``v_scale`` that this
export does not calibrate, and bfloat16 is not a CPU cache type for a float32 query, so those are refused
(config.py) rather than offered.

Sharing: the kernel writes in place when the past and present it is given are the same memory, which is only
sound when each ``present.{i}.*`` output is produced by the GroupQueryAttention node that reads the matching
``past_key_values.{i}.*`` input; :func:`declare_kv` checks that on the graph and records the answer in the
model's metadata (:data:`runtimes.onnx_kv.KV_META`), which runtimes read from the session without parsing the
file. ``genai_config.json`` says the same to onnxruntime-genai (``past_present_share_buffer``).
"""

from __future__ import annotations

import json

import onnx

from runtimes.onnx_kv import KV_META, PAST, PRESENT

from .graph import MS

KV_TYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def declare_kv(model: onnx.ModelProto, kv_dtype: str) -> dict:
    """Give every past input and present output the cache type ``kv_dtype``, check that past and present may share
    one buffer, and record both in the model's metadata (:data:`KV_META`). Returns the declaration."""
    g = model.graph
    elem = KV_TYPES[kv_dtype]
    for v in [*g.input, *g.output]:
        if v.name.startswith((PAST, PRESENT)):
            v.type.tensor_type.elem_type = elem
    kv = {"share_buffer": shares_buffer(g), "dtype": kv_dtype}
    props = [p for p in model.metadata_props if p.key != KV_META]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=KV_META, value=json.dumps(kv))
    return kv


def shares_buffer(g: onnx.GraphProto) -> bool:
    """Every present output comes straight from a GroupQueryAttention node whose past inputs (3: key, 4: value)
    are the matching ``past_key_values.{i}.key|value`` graph inputs."""
    inputs = {v.name for v in g.input}
    producer = {out: n for n in g.node for out in n.output}
    presents = [v.name for v in g.output if v.name.startswith(PRESENT)]
    if not presents:
        return False
    for name in presents:
        n = producer.get(name)
        if n is None or n.op_type != "GroupQueryAttention" or n.domain != MS:
            return False
        slot = list(n.output).index(name)  # 1: present key, 2: present value
        past = name.replace(PRESENT, PAST, 1)
        if slot not in (1, 2) or len(n.input) <= slot + 2 or n.input[slot + 2] != past or past not in inputs:
            return False
    return True
