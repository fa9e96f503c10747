"""A small ONNX graph builder: unique names, initializers, and the packing of integers into
onnxruntime's ``MatMulNBits`` / ``GatherBlockQuantized`` layouts.

    g = Graph()
    y = g.node("MatMul", [x, g.init("w", w_t)])
    b, s, z = nbits_tensors(qweight)        # B [N, k_blocks, block*bits/8] uint8, scales [N, k_blocks]

MatMulNBits (com.microsoft): ``B`` uint8 [N, k_blocks, blob] packed along K, low bits first; scales
[N, k_blocks] in the activation type; zero points optional (default 2^(bits-1): 8 for int4, 128 for
int8), packed like B. ``block_size`` must be a power of two >= 16, so a quantized artifact's group of
another width (per-channel: the whole row) is cut into power-of-two blocks that repeat its scale.
``bits`` is 4 or 8: 5-bit integers go into 8-bit blocks with their zero points (exact, 8 bits a weight).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.quantize.format import QuantizedWeight

log = logging.getLogger(__name__)

MS = "com.microsoft"
OPSET = 21


class Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        n = self._count.get(base, 0)
        self._count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def init(self, name: str, array: np.ndarray) -> str:
        if name in self.inits:
            raise ValueError(f"initializer {name} defined twice")
        arr = np.asarray(array)
        self.inits[name] = numpy_helper.from_array(arr if arr.flags.c_contiguous else arr.copy(order="C"), name)
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small constant (shapes, axes), shared by every node that needs the same one."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], n_out: int = 1, *, name: str | None = None, domain: str = "",
             outputs: list[str] | None = None, **attrs) -> list[str]:
        node_name = self.name(name or op)
        outs = outputs or [f"{node_name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=node_name, domain=domain or None, **attrs))
        return outs

    def one(self, op: str, inputs: list[str], **kw) -> str:
        return self.node(op, inputs, 1, **kw)[0]

    def model(self, doc: str) -> onnx.ModelProto:
        """The ModelProto; the initializers move into it (the builder holds none afterwards)."""
        graph = helper.make_graph(self.nodes, "decoder", self.inputs, self.outputs, [])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="compress", doc_string=doc)
        del graph
        m.ir_version = 10
        # One copy of the weights: make_graph and then make_model each copy every initializer, which
        # held three copies of all weights at once; moved one at a time, in the same order (same file).
        for name in list(self.inits):
            m.graph.initializer.append(self.inits.pop(name))
        return m


def nbits_block(group_size: int, width: int | None = None) -> int | None:
    """The MatMulNBits block for a group of ``group_size`` columns: the group itself when it is a power
    of two in [16, 256], else the largest power of two in [16, 128] dividing it, whose blocks repeat the
    group's scale (a per-channel group of 576 -> 64, nine times); None when there is none (a group of
    24, say: such a layer can only go in as float).

    >>> nbits_block(128), nbits_block(576), nbits_block(24)
    (128, 64, None)
    """
    if group_size >= 16 and group_size & (group_size - 1) == 0 and group_size <= 256:
        return group_size
    for b in (128, 64, 32, 16):
        if group_size % b == 0:
            return b
    return None


def nbits_bits(bits: int) -> int:
    """The MatMulNBits ``bits`` that holds an artifact's integers of ``bits``: 4 as 4; 5 and 8 as 8 (the
    kernel has no 5-bit form; 5-bit values with their zero points are exact in 8 bits)."""
    return 4 if bits == 4 else 8


def nbits_tensors(qw: QuantizedWeight, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B, scales, zero_points) for MatMulNBits from the integers, unchanged: B [N, k_blocks, blob]
    uint8, scales float32 [N, k_blocks] (fp16 values, exactly), zero points packed, or None where they
    are MatMulNBits' default (2^(bits-1): symmetric int4 and int8). A group of several blocks repeats
    its scale and zero point in each."""
    n, k = qw.shape
    bits = nbits_bits(qw.bits)
    rep = qw.group_size // block
    # MatMulNBits reads unsigned bytes: signed symmetric int8 (zero 0) moves up by 128, zero and all
    q = qw.integers()
    shift = 128 if q.dtype == np.int8 else 0
    q = q.astype(np.int16) + shift
    zp = np.repeat(qw.zero_points() + shift, rep, axis=1)
    top = (1 << bits) - 1
    if q.min() < 0 or q.max() > top or zp.min() < 0 or zp.max() > top:
        raise ValueError(f"{qw.name}: integers outside 0..{top} for {bits}-bit MatMulNBits")
    scales = np.repeat(qw.scales.astype(np.float32), rep, axis=1)
    nb = k // block
    q = q.astype(np.uint8)
    zp = zp.astype(np.uint8)
    default = qw.symmetric and bool((zp == 1 << (bits - 1)).all())
    if bits == 4:
        data = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, nb, block // 2)
        zeros = None if default else _pack_nibbles(zp)
    else:
        data = q.reshape(n, nb, block)
        zeros = None if default else zp
    return np.ascontiguousarray(data), scales, zeros


def unpack_nbits(b: np.ndarray, bits: int, n: int, k: int) -> np.ndarray:
    """The integers of a MatMulNBits ``B`` as [N, K] (inverse of :func:`nbits_tensors`, for checks)."""
    flat = b.reshape(n, -1)
    if bits == 8:
        return flat[:, :k].astype(np.uint8)
    q = np.empty((n, flat.shape[1] * 2), np.uint8)
    q[:, 0::2], q[:, 1::2] = flat & 0x0F, flat >> 4
    return q[:, :k]


def _pack_nibbles(z: np.ndarray) -> np.ndarray:
    if z.shape[1] % 2:
        z = np.concatenate([z, np.full((z.shape[0], 1), 8, np.uint8)], axis=1)
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def value_info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
INT64 = TensorProto.INT64
