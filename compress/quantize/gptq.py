"""GPTQ (Frantar et al. 2022): quantize one column at a time and push its rounding error onto the
columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

    qt, damp_used = gptq(W, stats.hessian, Grid(4, 64, True), damp=0.01, name="...q_proj")

With ``act_order`` the columns go by decreasing Hessian diagonal (most salient first), but every
group's scale is fixed up front from the original weights ("static groups"): the stored integers
then keep the natural column order and need no ``g_idx`` permutation in any export format.
"""

from __future__ import annotations

import logging

import torch

from ..errors import IncompatibleLayerError
from .clip import clip_fit
from .grid import Grid, QTensor, single_thread

log = logging.getLogger(__name__)

BLOCK = 128  # columns updated lazily together (the paper's block size)
MAX_DAMP_TRIES = 6


def inverse_hessian_factor(h: torch.Tensor, damp: float, *, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, raising λ ×10 (and logging it) each time
    the factorization fails; IncompatibleLayerError when even λ = 10⁵·damp fails."""
    h = h.double()
    mean = float(h.diagonal().mean()) or 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    d = damp
    for _ in range(MAX_DAMP_TRIES):
        chol, info = torch.linalg.cholesky_ex(h + d * mean * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper.float(), d
        log.warning("%s: Hessian Cholesky failed with damping %.3g; retrying with %.3g", name, d, d * 10)
        d *= 10
    raise IncompatibleLayerError(f"{name}: Hessian is not positive definite even with damping {d / 10:.3g} "
                                 "(degenerate calibration inputs?)")


@torch.no_grad()
def gptq(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, damp: float = 0.01, act_order: bool = False,
         clip: bool = True, name: str = "weight") -> tuple[QTensor, float]:
    """Quantize ``w`` [out, in] with Hessian ``h`` [in, in]; returns the integers and the damping used.
    With ``clip``, each group's range is searched for the least output error (clip.py) instead of
    spanning max |w|."""
    with single_thread():
        return _gptq(w, h, grid, damp=damp, act_order=act_order, clip=clip, name=name)


def _gptq(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, damp: float, act_order: bool, clip: bool,
          name: str) -> tuple[QTensor, float]:
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    out, cols = w.shape
    g = grid.group_size
    dead = h.diagonal() == 0  # inputs that never fire carry no information; zero them like the paper
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else None
    static = None
    if act_order:
        # static groups: scales from the original weights
        static = clip_fit(w, h, grid, name=name) if clip else grid.fit(w, name=name)
        w, h = w[:, perm], h[perm][:, perm]
    hinv, used = inverse_hessian_factor(h, damp, name=name)
    q = torch.zeros(out, cols, dtype=torch.int32)
    scale = torch.empty(out, cols // g, dtype=torch.float16)
    zero = None if grid.symmetric else torch.empty(out, cols // g, dtype=torch.uint8)
    if static is not None:
        scale, zero = static
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        w1 = w[:, b0:b1].clone()
        err = torch.zeros_like(w1)
        hb = hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            c = b0 + j
            col = int(perm[c]) if perm is not None else c
            grp = col // g
            if static is None and c % g == 0:
                # Dynamic groups: the scale sees the weights as already corrected by earlier columns.
                ahead = w1[:, j:j + g]
                if ahead.shape[1] < g:  # a group wider than the block (g = 256, or per channel)
                    ahead = torch.cat([ahead, w[:, b1:b1 + g - ahead.shape[1]]], 1)
                if clip:
                    s, z = clip_fit(ahead, h[c:c + g, c:c + g], Grid(grid.bits, g, grid.symmetric), name=name)
                else:
                    s, z = grid.fit(ahead, name=name)
                scale[:, grp] = s[:, 0]
                if zero is not None:
                    zero[:, grp] = z[:, 0]
            qc, deq = grid.quantize_column(w1[:, j], scale[:, grp], None if zero is None else zero[:, grp])
            q[:, c] = qc
            e = (w1[:, j] - deq) / hb[j, j]
            w1[:, j:] -= e[:, None] * hb[j, j:][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return QTensor(q, scale, zero, grid), used
