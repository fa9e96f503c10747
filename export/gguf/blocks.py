"""Tensor data in GGUF types: our own integers packed into ggml blocks, or floats quantized by gguf-py.

ggml's 32-wide blocks store one float16 scale ``d`` per block:

- ``Q4_0``: 16 bytes of 4-bit values, ``w = (q - 8) * d``. Value j of the block sits in the low nibble
  of byte j, value j + 16 in the high nibble of byte j. Our int4 layout pairs neighbours instead
  (byte = q[2j] | q[2j+1] << 4), so the nibbles are moved; the integers and scales are not touched.
- ``Q8_0``: 32 signed bytes, ``w = q * d``.

So a symmetric int4 (zero 8) or int8 (zero 0) layer with group 32 lands in GGUF bit for bit: the block
dequantizes to exactly our dequantized weight, and no calibration (GPTQ, AWQ) is thrown away.

    >>> direct_type(qw)            # int4, symmetric, group 32
    <GGMLQuantizationType.Q4_0: 2>
    >>> pack_direct(qw, Q4_0).shape  # (out, in / 32 * 18) bytes
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants

from .source import QuantizedWeight

BLOCK = 32


def direct_type(qw: QuantizedWeight) -> Q | None:
    """The GGUF type that holds these integers exactly, or None."""
    if qw.group_size != BLOCK or not qw.symmetric:
        return None
    return {4: Q.Q4_0, 8: Q.Q8_0}.get(qw.bits)


def pack_direct(qw: QuantizedWeight, qtype: Q) -> np.ndarray:
    """Our integers and float16 scales as ggml blocks (uint8, shape (out, in / 32 * block bytes))."""
    if direct_type(qw) != qtype:
        raise ValueError(f"{qw.name}: {qw.scheme} does not fit {qtype.name} blocks")
    out, n_in = qw.shape
    n_blocks = n_in // BLOCK
    d = np.ascontiguousarray(qw.scales, dtype=np.float16).reshape(out, n_blocks, 1).view(np.uint8)
    if qtype == Q.Q4_0:
        q = qw.integers().reshape(out, n_blocks, BLOCK)
        qs = q[..., :16] | (q[..., 16:] << np.uint8(4))
    else:
        qs = np.asarray(qw.qweight, dtype=np.int8).reshape(out, n_blocks, BLOCK).view(np.uint8)
    return np.concatenate([d, qs], axis=-1).reshape(out, -1)


def encode(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 data in ``qtype`` (F32, F16, BF16, Q8_0, Q4_0, Q4_1; rows must be whole blocks)."""
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
