"""Per-tensor sensitivity (``--analyze``) and the mixed-precision choice (``--budget-bits``).

    table = analyze(model, plan, ids, cfg)     # {name: {"params", "kl_int4", "kl_int5", "kl_int8", ...}}
    bits = allocate(plan, table, cfg)           # {name: 4 | 5 | 8 | 16}

Sensitivity is measured, not guessed: each decoder linear alone is rounded (RTN on its configured grid)
to every menu width below 8 bits, and the model's next-token distributions are compared with the float
model's (mean KL over the analysis tokens). Only the layers from that linear's onwards are re-run, from
cached inputs. The int8 figure is extrapolated from the widest measured one by the ratio of the grids'
quantization noise powers ((2^b - 1) / 255)^2, rather than measured: int8 losses are tiny anyway. The
embedding/output table (when the budget chooses it) is measured at every menu width with whole forward
passes: rounding a tied table changes both the model's inputs and its output projection.

The allocator minimizes the summed KL within the budget, counting each tensor at what it costs in the
files of ``--target`` (targets.cost_bits: GGUF Q5_0 is 5.5 bits, 5-bit in ONNX costs 8), so 5 bits are
chosen where they buy the most KL per byte.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..logits import log_probs, mean_kl
from ..progress import track
from . import calibrate  # looked up at call time: a test's monkeypatch of calibrate.capture must not stick
from .calibrate import layer_forward
from .config import QuantConfig
from .grid import Grid, rtn
from .layers import Plan, Target, decoder_layers, fixed_cost, tensor_cost

log = logging.getLogger(__name__)

# an upgrade must remove at least this fraction of the summed loss with every tensor at the lowest width
NEGLIGIBLE_GAIN = 1e-4
INT8_NOISE_RATIO = (15 / 255) ** 2  # int4 -> int8 (kept for readers of version-1 reports)


def noise_ratio(bits: int, to_bits: int) -> float:
    """Quantization noise power of a ``to_bits`` grid relative to a ``bits`` grid over the same range."""
    return (((1 << bits) - 1) / ((1 << to_bits) - 1)) ** 2


@torch.no_grad()
def run_from(model: nn.Module, start: int, hidden: torch.Tensor, kwargs: list[dict[str, Any]]) -> torch.Tensor:
    """Logits from decoder layer ``start`` onwards, given that layer's input (final norm, lm_head and
    Gemma-style logit soft-capping included)."""
    _, layers = decoder_layers(model)
    for i in range(start, len(layers)):
        hidden = layer_forward(layers[i], hidden, kwargs[i])
    base = getattr(model, model.base_model_prefix)
    logits = model.get_output_embeddings()(base.norm(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _tables_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits


@torch.no_grad()
def analyze(model: nn.Module, plan: Plan, ids: torch.Tensor, cfg: QuantConfig | None = None
            ) -> dict[str, dict[str, Any]]:
    """KL vs the float model when only one tensor is rounded, for every decoder linear of ``plan`` (at
    each menu width below 8 bits, on its grid's group size and symmetry) and every table the budget
    chooses (at each menu width)."""
    menu = cfg.menu if cfg is not None else (4, 8, 16)
    low = [b for b in menu if b < 8] or [min(t.grid.bits for t in plan.targets.values())]
    inputs, kwargs = calibrate.capture(model, ids, ids.shape[0], all_layers=True)
    ref = log_probs(run_from(model, 0, inputs[0], kwargs))
    table: dict[str, dict[str, Any]] = {}
    linears = [t for t in plan.targets.values() if t.layer is not None]
    for t in track(linears, "sensitivity", total=len(linears)):
        row: dict[str, Any] = {"params": t.module.weight.numel(), "kind": "linear"}
        for b in low:
            row[f"kl_int{b}"] = _rounded_kl(t, _grid(cfg, t, b), lambda t=t: run_from(model, t.layer, inputs[t.layer],
                                                                                       kwargs), ref)
        top = max(low)
        row["kl_int8"] = row[f"kl_int{top}"] * noise_ratio(top, 8)
        table[t.name] = row
    tables = [t for t in plan.targets.values() if t.layer is None and t.choose]
    if tables:
        full_ref = log_probs(_tables_logits(model, ids))
        for t in tables:
            row = {"params": t.module.weight.numel(), "kind": t.kind}
            for b in (b for b in menu if b < 16):
                row[f"kl_int{b}"] = _rounded_kl(t, _grid(cfg, t, b), lambda: _tables_logits(model, ids), full_ref)
            table[t.name] = row
    log.info("sensitivity measured on %d tokens for %d tensors", ids.numel(), len(table))
    return table


def _grid(cfg: QuantConfig | None, t: Target, bits: int) -> Grid:
    sym = cfg.grid_symmetric(bits) if cfg is not None else t.grid.symmetric
    return Grid(bits, t.grid.group_size, sym)


def _rounded_kl(t: Target, grid: Grid, logits, ref: torch.Tensor) -> float:
    w = t.module.weight
    orig = w.detach().clone()
    try:
        w.copy_(rtn(orig, grid, name=t.name).dequantize())
        return mean_kl(ref, logits())
    finally:
        w.copy_(orig)


def allocate(plan: Plan, table: dict[str, dict[str, Any]], cfg: QuantConfig) -> dict[str, int]:
    """Bits (from ``cfg.menu``; 16 = float) per analysed tensor minimizing the summed estimated KL with
    the average cost (targets.cost_bits, fixed-precision tables included) within ``cfg.budget_bits``.

    Greedy: repeatedly take the upgrade with the largest loss reduction per extra bit that still fits,
    ignoring upgrades that remove less than :data:`NEGLIGIBLE_GAIN` of the all-lowest-width loss: once every
    layer is where it measurably matters, the rest of the budget stays unspent (a smaller file) instead of
    lifting layers 8 -> 16 bits for ~1e-6 KL each (Gemma3 at 7.0 bits: 45 F16 linears, ~35 MB, for nothing).
    """
    names = [n for n in table if n in plan.targets and plan.targets[n].choose]
    menu = cfg.menu
    cost = {n: {b: table[n]["params"] * tensor_cost(cfg, plan.targets[n], b) for b in menu} for n in names}
    loss: dict[str, dict[int, float]] = {}
    for n in names:
        # measured KLs carry noise (a tiny layer's int5 can read above its int4): never let more bits look worse
        loss[n], prev = {}, float("inf")
        for b in menu:
            prev = loss[n][b] = min(prev, 0.0 if b == 16 else max(0.0, table[n][f"kl_int{b}"]))
    fixed_bits, fixed_params = fixed_cost(cfg, plan)
    total_params = sum(table[n]["params"] for n in names) + fixed_params
    budget = cfg.budget_bits * total_params
    low = menu[0]
    spent = sum(cost[n][low] for n in names) + fixed_bits
    if spent > budget:
        raise ConfigError(f"quantize.budget_bits: {cfg.budget_bits} is below the {spent / total_params:.3f} "
                          f"bits/weight that int{low} on every layer already costs (scales included)")
    choice = {n: low for n in names}
    floor = NEGLIGIBLE_GAIN * sum(loss[n][low] for n in names)
    while True:
        best: tuple[float, str, int] | None = None
        for n in names:
            cur = choice[n]
            for nxt in (b for b in menu if b > cur):
                extra = cost[n][nxt] - cost[n][cur]
                if loss[n][cur] - loss[n][nxt] < floor:
                    continue
                gain = (loss[n][cur] - loss[n][nxt]) / max(extra, 1e-9)
                if spent + extra <= budget and (best is None or gain > best[0]):
                    best = (gain, n, nxt)
        if best is None or best[0] <= 0:
            break
        _, n, nxt = best
        spent += cost[n][nxt] - cost[n][choice[n]]
        choice[n] = nxt
    log.info("budget %.2f bits/weight: %.3f used (upgrades worth less than %.2g KL each not bought)",
             cfg.budget_bits, spent / total_params, floor)
    return choice


def budget_summary(plan: Plan, table: dict[str, dict[str, Any]], choice: dict[str, int],
                   cfg: QuantConfig) -> dict[str, Any]:
    """Average cost of the choice (as allocate counts it), its estimated KL, and tensors per width."""
    fixed_bits, fixed_params = fixed_cost(cfg, plan)
    params = sum(table[n]["params"] for n in choice) + fixed_params
    bits = fixed_bits + sum(table[n]["params"] * tensor_cost(cfg, plan.targets[n], b) for n, b in choice.items())
    return {"bits_per_weight": bits / params,
            "counted_in": cfg.target or "the grids' own cost (no --target)",
            "estimated_kl": sum(table[n][f"kl_int{b}"] if b < 16 else 0.0 for n, b in choice.items()),
            "layers": {str(b): sum(1 for v in choice.values() if v == b) for b in cfg.menu},
            "tables": {n: ("float" if b == 16 else f"int{b}") for n, b in choice.items()
                       if plan.targets[n].layer is None}
                      | {n: ("float" if b == 16 else f"int{b}") + " (fixed)" for n, (_, b) in plan.fixed.items()}}
