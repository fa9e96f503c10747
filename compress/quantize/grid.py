"""The integer grid every method writes onto, and its exact storage layout (see FORMAT.md).

    grid = Grid(bits=4, group_size=64, symmetric=True)
    scale, zero = grid.fit(w)                      # fp16 scales, uint8 zeros (None when symmetric)
    qt = QTensor(grid.quantize(w, scale, zero), scale, zero, grid)
    w_hat = qt.dequantize()                        # (q - zero) * scale, in fp32

Integers are always chosen against the fp16-rounded scale, so an exporter that copies ``q`` and the
fp16 ``scale`` reproduces ``w_hat`` bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import torch

from ..errors import IncompatibleLayerError
from .format import implicit_zero, qrange

# Smallest positive fp16 (subnormal): the scale of an all-zero group, so that q = zero and w_hat = 0.
_TINY_FP16 = float(torch.finfo(torch.float16).smallest_normal) / 1024


@dataclasses.dataclass(frozen=True)
class Grid:
    bits: int  # 4, 5 or 8
    group_size: int  # columns per scale; equal to in_features for per-channel
    symmetric: bool

    @property
    def implicit_zero(self) -> int:
        # int4/int5 store unsigned values centred on 8/16 (like GGUF Q4_0/Q5_0); int8 symmetric is signed.
        return implicit_zero(self.bits)

    @property
    def qrange(self) -> tuple[int, int]:
        return qrange(self.bits, self.symmetric)

    def bits_per_weight(self) -> float:
        """Storage cost including the fp16 scale (and uint8 zero) of each group."""
        return self.bits + (16 + (0 if self.symmetric else 8)) / self.group_size

    def fit(self, w: torch.Tensor, clip: torch.Tensor | None = None, *,
            name: str = "weight") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scales (fp16, [out, groups]) and zeros (uint8 or None) for ``w`` [out, in].

        ``clip`` [out, groups] shrinks each group's range (AWQ/GPTQ clip search); 1 = full range.
        Symmetric int4 / int5 map the group's signed extreme to -8 / -16, as llama.cpp's Q4_0 / Q5_0
        do, which buys a finer step than max|w|/7; the scale is negative when that extreme is positive.
        """
        out, cols = w.shape
        g = w.float().reshape(out, cols // self.group_size, self.group_size)
        lo_q, hi_q = self.qrange
        if self.symmetric:
            if self.bits in (4, 5):
                idx = g.abs().argmax(-1, keepdim=True)
                scale = g.gather(-1, idx).squeeze(-1) / -float(self.implicit_zero)
            else:
                scale = g.abs().amax(-1) / hi_q
            if clip is not None:
                scale = scale * clip
            scale16 = _to_fp16(scale, name)
            return scale16, None
        # The range always contains 0 (as GPTQ's quantizer does), so the zero point is on the grid.
        mx, mn = g.amax(-1).clamp(min=0), g.amin(-1).clamp(max=0)
        if clip is not None:
            mx, mn = mx * clip, mn * clip
        scale16 = _to_fp16((mx - mn) / (hi_q - lo_q), name)
        zero = torch.round(-mn / scale16.float()).clamp(lo_q, hi_q).to(torch.uint8)
        return scale16, zero

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        """Integers q (int32, [out, in]) for ``w`` on the grid given by ``scale``/``zero`` (per group)."""
        s = scale.float().repeat_interleave(self.group_size, dim=1)
        z = self._zero_full(zero, scale.shape)
        lo, hi = self.qrange
        return (torch.round(w.float() / s) + z).clamp(lo, hi).to(torch.int32)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        """w[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g], in fp32."""
        s = scale.float().repeat_interleave(self.group_size, dim=1)
        z = self._zero_full(zero, scale.shape)
        return (q.float() - z) * s

    def _zero_full(self, zero: torch.Tensor | None, shape) -> torch.Tensor | float:
        if zero is None:
            return float(self.implicit_zero)
        return zero.float().repeat_interleave(self.group_size, dim=1)

    def quantize_column(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> tuple[
            torch.Tensor, torch.Tensor]:
        """One column (GPTQ): w [out], scale/zero [out] of its group -> (q int32, dequantized)."""
        z = float(self.implicit_zero) if zero is None else zero.float()
        lo, hi = self.qrange
        s = scale.float()
        q = (torch.round(w / s) + z).clamp(lo, hi)
        return q.to(torch.int32), (q - z) * s


def _to_fp16(scale: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(scale).all() or scale.abs().max() > torch.finfo(torch.float16).max:
        raise IncompatibleLayerError(f"{name}: weights too large for an fp16 scale (max |scale| "
                                     f"{float(scale.abs().max()):.3g} > 65504)")
    s16 = scale.to(torch.float16)
    return torch.where(s16 == 0, torch.full_like(s16, _TINY_FP16), s16)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: GPTQ's column loop and the AWQ/clip searches are thousands of small
    ops, which two OpenMP threads made 10x slower on a shared 2-core machine (spinning, not working)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclasses.dataclass
class QTensor:
    """A quantized matrix: integers, fp16 scales, optional zeros, and the grid they live on."""

    q: torch.Tensor  # [out, in], unpacked; kept in the grid's storage dtype (uint8, or int8 for symmetric int8)
    scale: torch.Tensor  # float16 [out, in / group_size]
    zero: torch.Tensor | None  # uint8 [out, in / group_size], only when asymmetric
    grid: Grid

    def __post_init__(self) -> None:
        # One byte per integer, not int32: quantize_ holds every layer's QTensor until the artifact is
        # written, and as int32 they weighed as much as the fp32 model (425 MB on SmolLM2-135M).
        # Every value is on the grid (qrange), so the narrower type is exact.
        dtype = torch.int8 if self.grid.bits == 8 and self.grid.symmetric else torch.uint8
        if self.q.dtype != dtype:
            self.q = self.q.to(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        return self.grid.dequantize(self.q, self.scale, self.zero)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The safetensors entries ``NAME.qweight``, ``NAME.scales`` (and ``NAME.zeros``)."""
        if self.grid.bits == 4:
            u = self.q.to(torch.uint8)
            qweight = u[:, 0::2] | (u[:, 1::2] << 4)  # low nibble = even column
        elif self.grid.bits == 8 and self.grid.symmetric:
            qweight = self.q.to(torch.int8)
        else:  # int5 (one value per byte) and asymmetric int8
            qweight = self.q.to(torch.uint8)
        out = {f"{name}.qweight": qweight.contiguous(), f"{name}.scales": self.scale.contiguous()}
        if self.zero is not None:
            out[f"{name}.zeros"] = self.zero.contiguous()
        return out

    @classmethod
    def from_tensors(cls, name: str, tensors: dict[str, torch.Tensor], grid: Grid) -> QTensor:
        qweight = tensors[f"{name}.qweight"]
        if grid.bits == 4:
            q = torch.stack([qweight & 0x0F, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)
        else:
            q = qweight
        return cls(q, tensors[f"{name}.scales"], tensors.get(f"{name}.zeros"), grid)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors("x").values())


def rtn(w: torch.Tensor, grid: Grid, *, name: str = "weight", clip: torch.Tensor | None = None) -> QTensor:
    """Round-to-nearest onto ``grid`` (the baseline every calibrated method must beat)."""
    scale, zero = grid.fit(w, clip, name=name)
    return QTensor(grid.quantize(w, scale, zero), scale, zero, grid)
