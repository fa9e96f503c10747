"""AWQ (Lin et al. 2023): scale up the input channels that carry large activations before rounding,
and fold the inverse scale into whatever produces those inputs, so the float model is unchanged.

    quantized = awq_layer(layer, targets, stats, sample, kwargs, head_dim=64, n_grid=20)

Scales s = mean|x| ** r are searched over r in [0, 1) per group of linears sharing an input; r = 0 is
plain round-to-nearest, so the search never does worse than RTN on the calibration data. The loss is
the linears' output error over *all* calibration tokens, tr(ΔW H ΔWᵀ) with H = E[x xᵀ], instead of
the reference implementation's forward passes on a token subsample: exact for the linear outputs and
far cheaper on a CPU. Folds: RMSNorm → q/k/v and → gate/up (Gemma's RMSNorm multiplies by 1 + w, so
w' = (1 + w)/s - 1), v_proj rows → o_proj (per KV head, so grouped-query attention works), up_proj
rows → down_proj. A per-group clip search (the reference's auto_clip) follows.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from .calibrate import InputStats, layer_forward
from .clip import clip_fit
from .grid import Grid, QTensor, rtn, single_thread
from .layers import Target

log = logging.getLogger(__name__)

def output_error(w_hat: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """Mean squared output error per token of replacing ``w`` by ``w_hat`` for inputs with E[xxᵀ] = h."""
    e = w_hat - w
    return float(((e @ h) * e).sum())


def search_scale(weights: list[tuple[torch.Tensor, Grid]], x_mean: torch.Tensor, h: torch.Tensor, n_grid: int,
                 expand=lambda s: s) -> tuple[torch.Tensor, float, float, float]:
    """Best input-channel scale for ``weights`` (which share one input); returns (s, ratio, loss, loss at r=0)."""
    best: tuple[torch.Tensor, float, float] | None = None
    loss0 = float("nan")
    for r in range(n_grid):
        ratio = r / n_grid
        s = x_mean.clamp(min=1e-8).pow(ratio).clamp(min=1e-4)
        s = expand(s / (s.max() * s.min()).sqrt())
        loss = sum(output_error(rtn(w * s, grid).dequantize() / s, w, h) for w, grid in weights)
        if r == 0:
            loss0 = loss
        if best is None or loss < best[2]:
            best = (s, ratio, loss)
    assert best is not None
    return best[0], best[1], best[2], loss0


def search_clip(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, name: str) -> QTensor:
    """RTN with each (row, group)'s range clipped for the least output error (AWQ's auto_clip, see
    clip.py); kept only if the full output error improves on no clipping."""
    scale, zero = clip_fit(w, h, grid, name=name)
    clipped, plain = QTensor(grid.quantize(w, scale, zero), scale, zero, grid), rtn(w, grid, name=name)
    if output_error(clipped.dequantize(), w, h) <= output_error(plain.dequantize(), w, h):
        return clipped
    return plain


def norm_offset(norm: nn.Module) -> float:
    """1.0 for norms that multiply by (1 + weight) (Gemma), 0.0 for plain weight (Llama)."""
    probe = copy.deepcopy(norm)
    with torch.no_grad():
        probe.weight.zero_()
        y = probe(torch.ones(1, norm.weight.shape[0]))
    return 1.0 if float(y.abs().max()) > 0.5 else 0.0


@torch.no_grad()
def producers(layer: nn.Module, sample: torch.Tensor, kwargs: dict[str, Any]) -> dict[nn.Linear, nn.Module]:
    """For every linear of the layer, the norm module whose output *is* its input (traced on one
    sample); linears fed by anything else are absent."""
    outputs: list[tuple[torch.Tensor, nn.Module]] = []
    found: dict[nn.Linear, nn.Module] = {}
    norms = [m for m in layer.modules() if not isinstance(m, nn.Linear) and isinstance(
        getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1]
    hooks = [m.register_forward_hook(lambda mod, _a, out: outputs.append((out, mod))) for m in norms]

    def pre(lin, args):
        for t, mod in outputs:
            if t is args[0]:
                found[lin] = mod

    hooks += [m.register_forward_pre_hook(pre) for m in layer.modules() if isinstance(m, nn.Linear)]
    try:
        layer_forward(layer, sample, kwargs)
    finally:
        for hk in hooks:
            hk.remove()
    return found


@torch.no_grad()
def awq_layer(layer: nn.Module, targets: dict[str, Target], stats: dict[str, InputStats], sample: torch.Tensor,
              kwargs: dict[str, Any], *, head_dim: int | None, n_grid: int) -> tuple[dict[str, QTensor], dict]:
    """Search and fold scales for one decoder layer, then clip-search and round every target.
    Modifies the layer's norms and weights in place (the float function is unchanged by the folds)."""
    with single_thread():
        return _awq_layer(layer, targets, stats, sample, kwargs, head_dim=head_dim, n_grid=n_grid)


def _awq_layer(layer: nn.Module, targets: dict[str, Target], stats: dict[str, InputStats], sample: torch.Tensor,
               kwargs: dict[str, Any], *, head_dim: int | None, n_grid: int) -> tuple[dict[str, QTensor], dict]:
    info: dict[str, Any] = {}
    h = {n: stats[n].hessian for n in targets}
    # 1. norm -> linears sharing its output
    by_input: dict[int, list[str]] = {}
    for n in targets:
        by_input.setdefault(id(stats[n]), []).append(n)
    prod = producers(layer, sample, kwargs)
    plan: list[tuple[list[nn.Linear], Any, torch.Tensor]] = []  # (linears whose columns scale, fold, s)
    for names in by_input.values():
        norm = prod.get(targets[names[0]].module)
        if norm is None or any(prod.get(targets[n].module) is not norm for n in names):
            continue
        s, ratio, loss, loss0 = search_scale([(targets[n].module.weight.float(), targets[n].grid) for n in names],
                                             stats[names[0]].abs_mean, h[names[0]], n_grid)
        # Every reader of the norm's output must absorb s, including linears left in float.
        readers = [lin for lin, p in prod.items() if p is norm]
        plan.append((readers, ("norm", norm), s))
        info[",".join(_short(n) for n in names)] = {"ratio": ratio, "loss": loss, "loss_rtn": loss0}
    # 2. v_proj rows -> o_proj columns, up_proj rows -> down_proj columns
    # (the source may be a linear left in float: scaling its rows is exact either way)
    by_suffix = {n.rsplit(".", 1)[-1]: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    for src, dst in (("v_proj", "o_proj"), ("up_proj", "down_proj")):
        b = next((n for n in targets if n.endswith("." + dst)), None)
        if src not in by_suffix or b is None:
            continue
        wa, wb = by_suffix[src], targets[b].module
        rows, width = wa.weight.shape[0], wb.weight.shape[1]
        x = stats[b].abs_mean
        expand = lambda s: s  # noqa: E731
        if rows != width:  # grouped-query attention: each KV channel feeds n_heads / n_kv channels
            if src != "v_proj" or not head_dim or width % rows or rows % head_dim:
                continue
            rep, kv = width // rows, rows // head_dim
            x = x.view(kv, rep, head_dim).mean(1).reshape(-1)
            expand = lambda s, kv=kv, rep=rep: s.view(kv, 1, head_dim).expand(kv, rep, head_dim).reshape(-1)  # noqa: E731
        s, ratio, loss, loss0 = search_scale([(wb.weight.float(), targets[b].grid)], x, h[b], n_grid, expand)
        plan.append(([wb], ("rows", wa, rows), s))
        info[f"{src}->{dst}"] = {"ratio": ratio, "loss": loss, "loss_rtn": loss0}
    # 3. fold: the float layer computes the same function afterwards
    for readers, (kind, mod, *rest), s in plan:
        if kind == "norm":
            off = norm_offset(mod)
            mod.weight.copy_((off + mod.weight.float()) / s - off)
        else:
            s_rows = s if s.shape[0] == rest[0] else _kv_rows(s, rest[0], head_dim)
            mod.weight.div_(s_rows[:, None])
            if mod.bias is not None:
                mod.bias.div_(s_rows)
        for lin in readers:
            lin.weight.mul_(s[None, :])
        for n, t in targets.items():
            if any(t.module is lin for lin in readers):
                h[n] = h[n] / (s[:, None] * s[None, :])
    # 4. clip search + rounding, each linear against its (scaled) input statistics
    out: dict[str, QTensor] = {}
    for n, t in targets.items():
        out[n] = search_clip(t.module.weight.float(), h[n], t.grid, name=n)
    return out, info


def _kv_rows(s: torch.Tensor, rows: int, head_dim: int | None) -> torch.Tensor:
    """Inverse of the per-head expansion: the scale of each of the ``rows`` KV channels."""
    hd = head_dim or 1
    kv = rows // hd
    return s.view(kv, -1, hd)[:, 0, :].reshape(-1)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]
