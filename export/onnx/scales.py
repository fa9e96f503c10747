"""Float16 scales for MatMulNBits / GatherBlockQuantized (``OnnxConfig.scale_type``).

    with activation_ranges(model) as ranges:            # PyTorch, per linear: max |input|, max |output|
        reference = reference_logits(model, tokenizer, 64)
    nodes = half_scale_nodes(onnx_model, weight_map, ranges)
    report = half_scales(onnx_model, nodes)             # in place; what the manifest records

Why: MatMulNBits takes its scales in the activation type, so a float32 graph stores float32 scales: one
bit a weight at block 32 (int4 g32 is 5.0 bits a weight, llama.cpp's Q4_0 4.5). The artifact's scales
are float16 values already (compress/quantize/FORMAT.md), so storing them as float16 loses nothing; the
node then runs with float16 activations: a Cast of its input to float16 (one per distinct input, shared by
q/k/v and gate/up) and of its output back to float32. onnxruntime's CPU kernel widens float16 to float32
inside, and at accuracy_level 4 it rounds the activations to int8 per block anyway, so the only new rounding
is of the input and output to float16's 11-bit mantissa. The casts cost a few percent of speed (SmolLM2's
mixed file: decode and prefill 0.97x at one thread, 0.94x / 0.96x at two; benchmarks/bench_onnx_scales.py).

``auto`` gives float16 to 4-bit nodes only. An 8-bit node's own rounding is about as fine as float16's 11-bit
mantissa on its output, so there float16 activations add a loss of their own (``make gate`` caught it: SmolLM2's
all-int8 ONNX file went from KL 0.0082 to 0.0086, perplexity +0.3%) to save 0.5 of 9 bits a weight; a 4-bit node
saves 0.5 of 5 and its rounding dwarfs float16's. ``float16`` gives it to every node.

float16 overflows at 65,504: a node whose input or output reached more than :data:`SAFE_MAX` on the check
tokens (in PyTorch, before the export) keeps float32 scales. A bias moves out of the node into a float32
Add after the cast, so it is not rounded.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

# 1/16 of float16's largest value: activations on other text than the 64 check tokens may run larger
SAFE_MAX = 4096.0
SCALED_OPS = ("MatMulNBits", "GatherBlockQuantized")
_SCALES = 2  # the scales' input index in both ops


@contextlib.contextmanager
def activation_ranges(model, enabled: bool = True) -> Iterator[dict[str, float]]:
    """While open, every forward pass of a PyTorch model records max(|input|, |output|) of each nn.Linear (and
    the token table's output) into the dict it yields: what a float16 cast of the node's activations must hold.
    Used around the export's own reference pass, so the check tokens run once. ``enabled`` False: no hooks."""
    import torch
    from torch import nn

    ranges: dict[str, float] = {}
    hooks = []

    def record(name):
        def hook(module, args, out):
            x = args[0] if args else None
            top = float(out.detach().abs().max()) if torch.is_tensor(out) else 0.0
            if torch.is_tensor(x) and x.is_floating_point():
                top = max(top, float(x.detach().abs().max()))
            ranges[name] = max(ranges.get(name, 0.0), top)
        return hook

    if enabled:
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                hooks.append(module.register_forward_hook(record(name)))
    try:
        yield ranges
    finally:
        for h in hooks:
            h.remove()


def half_scale_nodes(model: onnx.ModelProto, weight_map: dict[str, dict], ranges: dict[str, float],
                     bits: tuple[int, ...] = (4,)) -> tuple[set[str], dict[str, float]]:
    """(nodes whose scales may go to float16, {node: range} of those kept float32 for their range). Only nodes
    of ``bits`` are candidates (``auto``: 4-bit, see the module docstring).

    A node holding several modules (q/k/v side by side) is as safe as its least safe one; a module with no
    measured range (not reached by the forward pass) keeps float32."""
    per_node: dict[str, float] = {}
    for module, where in weight_map.items():
        r = ranges.get(module)
        per_node[where["node"]] = max(per_node.get(where["node"], 0.0), float("inf") if r is None else r)
    if "embed_tokens" not in per_node:  # the table's GatherBlockQuantized: its output is the embedding
        r = next((v for k, v in ranges.items() if k.endswith("embed_tokens")), None)
        per_node["embed_tokens"] = float("inf") if r is None else r
    ok, kept = set(), {}
    for n in model.graph.node:
        if n.op_type not in SCALED_OPS or node_bits(n) not in bits:
            continue
        r = per_node.get(n.name, float("inf"))
        (ok.add(n.name) if r <= SAFE_MAX else kept.__setitem__(n.name, r))
    # a shared table (GatherBlockQuantized + lm_head MatMulNBits on one set of scales) is one decision
    shared = _scale_users(model)
    for users in shared.values():
        if len(users) > 1 and not all(u in ok for u in users):
            for u in users:
                if u in ok:
                    ok.discard(u)
                    kept[u] = per_node.get(u, float("inf"))
    return ok, kept


def node_bits(node: onnx.NodeProto) -> int:
    """The ``bits`` attribute of a MatMulNBits / GatherBlockQuantized node (4 when absent: both ops' default)."""
    return next((a.i for a in node.attribute if a.name == "bits"), 4)


def _scale_users(model: onnx.ModelProto) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in SCALED_OPS and len(n.input) > _SCALES:
            users.setdefault(n.input[_SCALES], []).append(n.name)
    return users


def half_scales(model: onnx.ModelProto, nodes: set[str]) -> dict[str, Any]:
    """Rewrite ``nodes`` (MatMulNBits / GatherBlockQuantized) to float16 scales and activations, in place.
    The scales must be float16 values already (checked: a scale that does not survive the cast is an error,
    since this pass must not round anything the artifact holds)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    converted: set[str] = set()
    casts_in: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for n in g.node:
        if n.name not in nodes or n.op_type not in SCALED_OPS:
            new_nodes.append(n)
            continue
        s_name = n.input[_SCALES]
        if s_name not in converted:
            _to_half(inits, s_name, n.name)
            converted.add(s_name)
        after: list[onnx.NodeProto] = []
        if n.op_type == "MatMulNBits":
            x = n.input[0]
            if x not in casts_in:
                casts_in[x] = f"{x}/fp16"
                new_nodes.append(helper.make_node("Cast", [x], [casts_in[x]], name=f"{n.name}/in_fp16",
                                                  to=TensorProto.FLOAT16))
            n.input[0] = casts_in[x]
            bias = n.input[5] if len(n.input) > 5 else ""
            if bias:  # keep the bias float32: added after the cast back
                del n.input[5]
                while n.input and n.input[-1] == "":
                    del n.input[-1]
        else:
            bias = ""
        out = n.output[0]
        half = f"{out}/fp16"
        n.output[0] = half
        cast_out = out if not bias else f"{out}/nobias"
        after.append(helper.make_node("Cast", [half], [cast_out], name=f"{n.name}/out_fp32", to=TensorProto.FLOAT))
        if bias:
            after.append(helper.make_node("Add", [cast_out, bias], [out], name=f"{n.name}/bias_fp32"))
        new_nodes.append(n)
        new_nodes.extend(after)
        count += 1
    del g.node[:]
    g.node.extend(new_nodes)
    return {"float16": count, "scales_converted": len(converted)}


def _to_half(inits: dict[str, onnx.TensorProto], name: str, node: str) -> None:
    t = inits.get(name)
    if t is None:
        raise ValueError(f"{node}: scales {name} are not an initializer")
    arr = numpy_helper.to_array(t)
    if arr.dtype == np.float16:
        return
    half = arr.astype(np.float16)
    if not np.array_equal(half.astype(arr.dtype), arr):
        raise ValueError(f"{node}: scales {name} are not float16 values; float16 storage would round them")
    t.CopyFrom(numpy_helper.from_array(half, name))
