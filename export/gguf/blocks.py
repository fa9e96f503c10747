"""Tensor data in GGUF types: our own integers packed into ggml blocks, or floats quantized by gguf-py.

ggml's 32-wide blocks store a float16 scale ``d`` per block, and the ``_1`` types a float16 offset ``m``:

    Q4_0  w = d * (q - 8)     q 0..15   18 bytes: d, 16 bytes of nibbles
    Q4_1  w = d * q + m       q 0..15   20 bytes: d, m, 16 bytes of nibbles
    Q5_0  w = d * (q - 16)    q 0..31   22 bytes: d, qh (bit 4 of value j in bit j), 16 bytes of nibbles
    Q5_1  w = d * q + m       q 0..31   24 bytes: d, m, qh, 16 bytes of nibbles
    Q8_0  w = d * q           q -128..127  34 bytes: d, 32 signed bytes

Nibbles: value j of a block in the low nibble of byte j, value j + 16 in the high nibble (our int4 layout
pairs neighbours instead, so the nibbles are moved; the integers are not touched).

Our layers are ``w = s * (q - z)`` per group (compress/quantize/FORMAT.md). A group that is a whole
number of 32-blocks lands in these blocks with ``d = s`` repeated in each of its blocks, so:

- without an offset (``_0`` and Q8_0) the block holds ``q - z`` shifted onto its own range, which is
  possible when that range fits (symmetric 4-bit in Q4_0, any 4-bit or symmetric 5-bit in Q5_0,
  any 4/5-bit or symmetric 8-bit in Q8_0): bit for bit our dequantized weight;
- with an offset (``_1``) the block holds ``q`` itself and ``m = -s * z``: exact for a symmetric
  layer (``z`` is a power of two), and otherwise ``m`` is the float16 rounding of ``-s * z``, the only
  rounding left (:func:`error_bound`).

Asymmetric int8 (``q - z`` spans -255..255) and groups that are not whole blocks have no such type.

    >>> carriers(qw)               # int4, symmetric, group 64
    (<GGMLQuantizationType.Q4_0: 2>, <GGMLQuantizationType.Q4_1: 3>, ...)
    >>> pack(qw, Q.Q4_0).shape     # (out, in / 32 * 18) bytes
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants

from .source import QuantizedWeight

BLOCK = 32
FLOAT = (Q.F32, Q.F16, Q.BF16)
# block type -> (bits of its integers, whether it stores an offset m); in order of size per weight
GRIDS: dict[Q, tuple[int, bool]] = {Q.Q4_0: (4, False), Q.Q4_1: (4, True), Q.Q5_0: (5, False),
                                    Q.Q5_1: (5, True), Q.Q8_0: (8, False)}
_ROWS_PER_CHUNK = 8192  # Gemma3's 262k-row embedding is packed a slice at a time
_F16_UNIT = 2.0 ** -11  # float16 unit roundoff (10 stored mantissa bits)
_F16_HALF_SUBNORMAL = 2.0 ** -25  # half the spacing of float16's subnormals
_F32_UNIT = 2.0 ** -24


_SYMMETRIC_OFFSETS = {4: (-8, 7), 5: (-16, 15), 8: (-127, 127)}  # q - z for the implicit zeros 8, 16, 0


def _offsets(qw: QuantizedWeight) -> tuple[int, int]:
    """Smallest and largest ``q - z`` the layer's scheme allows."""
    if qw.symmetric:
        return _SYMMETRIC_OFFSETS[qw.bits]
    top = (1 << qw.bits) - 1
    return -top, top


def holds(qw: QuantizedWeight, qtype: Q) -> bool:
    """Whether ``qtype``'s blocks hold these integers exactly (up to float16 of ``m`` for ``_1`` types)."""
    if qtype not in GRIDS or qw.group_size % BLOCK:
        return False
    bits, offset = GRIDS[qtype]
    if offset:  # the block stores q unsigned: q itself must fit (signed symmetric int8 does not)
        return qw.bits <= bits and not (qw.bits == 8 and qw.symmetric)
    lo, hi = _offsets(qw)
    return -(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1


def carriers(qw: QuantizedWeight) -> tuple[Q, ...]:
    """Block types that hold these integers exactly, smallest first (empty: none does)."""
    return tuple(t for t in GRIDS if holds(qw, t))


def why_not(qw: QuantizedWeight, qtype: Q) -> str:
    """Why ``qtype`` cannot hold this layer, in a few words."""
    if qw.group_size % BLOCK:
        return f"its groups of {qw.group_size} are not whole 32-wide blocks"
    if qtype not in GRIDS:
        return f"{qtype.name} is not a 32-block type"
    bits, offset = GRIDS[qtype]
    if offset:
        what = "signed" if qw.bits == 8 and qw.symmetric else f"{qw.bits}-bit"
        return f"{qtype.name} stores q unsigned in 0..{(1 << bits) - 1}, this layer's q is {what}"
    lo, hi = _offsets(qw)
    return (f"{qtype.name} stores q - zero in {-(1 << (bits - 1))}..{(1 << (bits - 1)) - 1}, "
            f"this layer's spans {lo}..{hi}")


def pack(qw: QuantizedWeight, qtype: Q) -> np.ndarray:
    """Our integers and float16 scales as ggml blocks: uint8 [out, in / 32 * block bytes]."""
    if not holds(qw, qtype):
        raise ValueError(f"{qw.name}: {qw.scheme} does not fit {qtype.name} blocks ({why_not(qw, qtype)})")
    out, n_in = qw.shape
    res = np.empty((out, n_in // BLOCK * GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    for a in range(0, out, _ROWS_PER_CHUNK):
        part = qw if out <= _ROWS_PER_CHUNK else qw.take_rows(np.arange(a, min(a + _ROWS_PER_CHUNK, out)))
        res[a:a + part.shape[0]] = _pack_rows(part.integers(), np.asarray(part.scales), part.zero_points(),
                                              qw.group_size, qtype)
    return res


def _pack_rows(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group: int, qtype: Q) -> np.ndarray:
    out, n_in = q.shape
    nb, per = n_in // BLOCK, group // BLOCK
    q = q.astype(np.int16).reshape(out, nb, BLOCK)
    z = np.repeat(zeros.astype(np.int16), per, axis=1)[..., None]  # [out, nb, 1]
    s = np.ascontiguousarray(np.repeat(np.asarray(scales, dtype=np.float16), per, axis=1))  # [out, nb]
    parts = [s.reshape(out, nb, 1).view(np.uint8)]
    bits, offset = GRIDS[qtype]
    if offset:
        parts.append(offset_m(s, z[..., 0]).reshape(out, nb, 1).view(np.uint8))
        v = q
    else:
        v = q - z + (0 if qtype == Q.Q8_0 else 1 << (bits - 1))
    if qtype == Q.Q8_0:
        parts.append(v.astype(np.int8).view(np.uint8))
    else:
        v = v.astype(np.uint8)
        if bits == 5:  # qh: bit 4 of value j in bit j of a little-endian uint32
            parts.append(np.packbits((v >> np.uint8(4)) & np.uint8(1), axis=-1, bitorder="little"))
        parts.append((v[..., :16] & np.uint8(0x0F)) | ((v[..., 16:] & np.uint8(0x0F)) << np.uint8(4)))
    return np.concatenate(parts, axis=-1).reshape(out, -1)


def offset_m(scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """``m = -s * z`` in float16: ``s * z`` is exact in float32 (11 + 8 bits), so this rounds once."""
    m = -(np.asarray(scales, dtype=np.float32) * np.asarray(zeros, dtype=np.float32))
    with np.errstate(over="ignore"):
        m16 = m.astype(np.float16)
    if not np.isfinite(m16).all():
        raise ValueError("an offset -scale * zero exceeds float16's range")
    return m16


def error_bound(qw: QuantizedWeight, qtype: Q) -> np.ndarray:
    """Per group [out, in/g], the largest |gguf-py's dequantization of the block - our dequantized
    weight| the format's arithmetic allows: 0 for the types without an offset (bit for bit), and for
    Q4_1/Q5_1 the float16 rounding of ``m`` (half an ulp: 2^-11 |s z|, or 2^-25 among subnormals) plus
    the float32 rounding of ``d * q + m`` (2^-24 of its magnitude)."""
    if qtype not in GRIDS or not GRIDS[qtype][1]:
        return np.zeros(qw.scales.shape, dtype=np.float64)
    s = np.abs(np.asarray(qw.scales, dtype=np.float64))
    sz = s * qw.zero_points().astype(np.float64)
    m_round = np.maximum(_F16_UNIT * sz, _F16_HALF_SUBNORMAL)
    top = (1 << qw.bits) - 1
    return m_round + _F32_UNIT * (s * top + sz + m_round)


def encode(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 data in ``qtype`` (F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1; rows must be whole blocks)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quants.quantize(data, qtype)


def fits(shape: tuple[int, ...], qtype: Q) -> bool:
    """Whether rows of this width can be stored in ``qtype`` (whole blocks)."""
    return shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0


def stored_layout(shape: tuple[int, ...], qtype: Q) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape as handed to the writer, its numpy dtype, bytes) of a tensor of logical ``shape``."""
    if qtype == Q.F32:
        return shape, np.dtype(np.float32), int(np.prod(shape)) * 4
    if qtype == Q.F16:
        return shape, np.dtype(np.float16), int(np.prod(shape)) * 2
    byte_shape = quants.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))
