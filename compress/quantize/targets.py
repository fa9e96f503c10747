"""What each deployment format makes of an integer grid: the one table that ``--target``, the budget's cost
model and ``--dry-run`` read (numpy-free and torch-free, so exporters may read it too).

    >>> gguf_type(bits=4, group=64, symmetric=True, width=576)      # scale repeated in each 32-block
    'Q4_0'
    >>> gguf_type(4, 16, True, 576) is None                          # not a GGUF block
    True
    >>> onnx_nbits(5, 32, True, 576)                                  # 5-bit rides in 8-bit blocks
    (8, 32)
    >>> bits_per_weight("gguf", 5, 32, False, 576)                    # Q5_1: fp16 d and m per 32
    6.0

The arithmetic is in FORMAT.md ("Exporter notes"). A grid is *carried* by a format when the file holds
exactly the artifact's integers and fp16 scales (only fp16 rounding of GGUF's ``m`` remains).
"""

from __future__ import annotations

from typing import Literal, Optional

Target = Literal["gguf", "onnx", "both"]
TARGETS: tuple[str, ...] = ("gguf", "onnx", "both")
GGUF_BLOCK = 32
FLOAT = 16  # the menu's "keep in float" entry: F16 in GGUF, a float32 MatMul in ONNX (32 bits a weight)

_GGUF = {(4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (5, False): "Q5_1", (8, True): "Q8_0"}
# MatMulNBits scale width per storage bits, as export-onnx's scale_type auto writes them: float16 for 4-bit nodes,
# float32 for 8-bit ones (float16 activations would cost an int8 node quality; export/onnx/scales.py). A 4-bit node
# whose activations would overflow float16 keeps float32 and costs 16 bits a block more than counted here, which
# the export's manifest reports.
ONNX_SCALE_BITS = {4: 16, 8: 32}
# bits per weight of each GGUF type: the block's integers plus fp16 d (and fp16 m for the _1 types) per 32
GGUF_BPW = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "F16": 16.0}


def formats(target: Optional[str]) -> tuple[str, ...]:
    """The formats a ``--target`` names: () for none, ("gguf", "onnx") for both."""
    return {None: (), "gguf": ("gguf",), "onnx": ("onnx",), "both": ("gguf", "onnx")}[target]


def _group(group: int, width: int) -> int:
    return group if group and group > 0 else width  # 0 = per channel: one group spans the row


def gguf_type(bits: int, group: int, symmetric: bool, width: int) -> str | None:
    """The GGUF type that holds this grid exactly (``F16`` for the float entry), or None."""
    if bits == FLOAT:
        return "F16"
    g = _group(group, width)
    if g % GGUF_BLOCK or width % GGUF_BLOCK:
        return None
    return _GGUF.get((bits, symmetric))


def onnx_block(group: int, width: int) -> int | None:
    """MatMulNBits ``block_size`` for a group: the group when a power of two in [16, 256], else the largest
    power of two in [16, 128] dividing it (its blocks repeat the group's scale); None when none does.
    (The same rule as export/onnx/graph.py's nbits_block.)"""
    g = _group(group, width)
    if 16 <= g <= 256 and g & (g - 1) == 0:
        return g
    for b in (128, 64, 32, 16):
        if g % b == 0:
            return b
    return None


def onnx_nbits(bits: int, group: int, symmetric: bool, width: int) -> tuple[int, int] | None:
    """(MatMulNBits bits, block_size) holding this grid exactly, or None. 5-bit goes in 8-bit storage."""
    if bits == FLOAT:
        return None
    block = onnx_block(group, width)
    if block is None:
        return None
    return (4 if bits == 4 else 8), block


def why_not(fmt: str, bits: int, group: int, symmetric: bool, width: int) -> str | None:
    """None when ``fmt`` carries the grid exactly, else the reason (for error messages and skips)."""
    g = _group(group, width)
    if bits == FLOAT:
        return None
    if fmt == "gguf":
        if bits == 8 and not symmetric:
            return "GGUF has no asymmetric 8-bit block (Q8_0 is w = d*q): int8 must be symmetric"
        if g % GGUF_BLOCK or width % GGUF_BLOCK:
            what = "per-channel width" if not group or group == width else "group"
            return f"GGUF blocks hold 32 values, and the {what} {g} is not a multiple of 32"
        return None
    if onnx_block(group, width) is None:
        return f"MatMulNBits needs a power-of-two block >= 16 dividing the group, and {g} has none"
    return None


def carried(target: Optional[str], bits: int, group: int, symmetric: bool, width: int) -> bool:
    """Every format ``target`` names holds the grid exactly."""
    return all(why_not(f, bits, group, symmetric, width) is None for f in formats(target))


def bits_per_weight(fmt: Optional[str], bits: int, group: int, symmetric: bool, width: int) -> float:
    """Stored bits per weight, scales and zero points included.

    ``fmt`` None: the grid's own cost, ``bits + (16 + 8 if asymmetric) / group`` (fp16 scale, uint8 zero);
    the float entry costs 16 (fp16), except in ONNX, whose export keeps float layers in float32.
    ``gguf``: the block type's (Q4_0 4.5 ... Q8_0 8.5; Q4_1/Q5_1 carry an fp16 ``m`` per 32 values).
    ``onnx``: MatMulNBits storage (5-bit costs 8), scales per block as the export's default ``scale_type``
    writes them (float16 for 4-bit, float32 for 8-bit), packed zero points unless the default (symmetric
    4- and 8-bit).
    """
    if bits == FLOAT:
        # the ONNX export keeps a float layer of a quantized artifact as a float32 MatMul (precision auto):
        # counted at 16 bits, a Gemma3 ONNX budget of 6.9 bits made a 7.35-bit file (35 float layers)
        return 32.0 if fmt == "onnx" else 16.0
    g = _group(group, width)
    if fmt is None:
        return bits + (16 + (0 if symmetric else 8)) / g
    if fmt == "gguf":
        t = gguf_type(bits, group, symmetric, width)
        if t is None:
            raise ValueError(f"int{bits} {'sym' if symmetric else 'asym'} g{g} has no GGUF type")
        return GGUF_BPW[t]
    nb = onnx_nbits(bits, group, symmetric, width)
    if nb is None:
        raise ValueError(f"int{bits} g{g} has no MatMulNBits block")
    sb, block = nb
    zero_points = not symmetric or bits == 5  # symmetric 5-bit's zero 16 is not MatMulNBits' default 128
    return sb + ONNX_SCALE_BITS[sb] / block + (sb / block if zero_points else 0.0)


def cost_bits(target: Optional[str], bits: int, group: int, symmetric: bool, width: int) -> float:
    """The budget's cost of a grid: the dearest of the named formats (the budget holds in each file),
    or the grid's own cost without a target."""
    fmts = formats(target)
    if not fmts:
        return bits_per_weight(None, bits, group, symmetric, width)
    return max(bits_per_weight(f, bits, group, symmetric, width) for f in fmts)


def describe(fmt: str, bits: int, group: int, symmetric: bool, width: int) -> str:
    """What ``fmt`` makes of the grid, for the dry-run table: ``Q5_0``, ``F16``, ``8b/32``, ``float``,
    or ``re-rounded`` where the format cannot hold it exactly."""
    if fmt == "gguf":
        return gguf_type(bits, group, symmetric, width) or "re-rounded"
    if bits == FLOAT:
        return "float"
    nb = onnx_nbits(bits, group, symmetric, width)
    return f"{nb[0]}b/{nb[1]}" if nb else "re-rounded"
