"""Range (clip) search: shrink each group's range when that lowers the layer's output error.

    scale, zero = clip_fit(w, h, grid)          # like grid.fit(w), but each (row, group) clipped

Max-|w| scaling spends grid levels on a group's single largest weight; shrinking the range trades a
larger error on that weight for a finer step on all the others. The ratio (1.0, 0.95 ... 0.5, as
AWQ's auto_clip) is chosen per (row, group) to minimize the output error on calibration inputs,
eᵀ H_gg e, using the group's diagonal block of H = E[x xᵀ]; llama.cpp's k-quants search their block
scales in the same spirit (weighted by an importance matrix when given one).
"""

from __future__ import annotations

import torch

from .grid import Grid

CLIP_GRID = 20
MAX_SHRINK = 0.5


def clip_fit(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, name: str = "weight"
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and zeros) for ``w`` [out, in] on ``grid``, each group's range shrunk by the ratio that
    minimizes its output error under the block-diagonal part of ``h`` [in, in]."""
    out, cols = w.shape
    g = grid.group_size
    ng = cols // g
    hb = torch.stack([h[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(ng)])
    wf = w.float()
    best_err = torch.full((out, ng), float("inf"))
    best_clip = torch.ones(out, ng)
    for k in range(int(MAX_SHRINK * CLIP_GRID) + 1):
        clip = torch.full((out, ng), 1 - k / CLIP_GRID)
        scale, zero = grid.fit(wf, clip, name=name)
        e = (grid.dequantize(grid.quantize(wf, scale, zero), scale, zero) - wf).reshape(out, ng, g)
        err = torch.einsum("ogi,gij,ogj->og", e, hb, e)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, clip, best_clip)
    return grid.fit(wf, best_clip, name=name)
