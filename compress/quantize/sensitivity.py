"""Per-layer sensitivity (``--analyze``) and the mixed-precision choice (``--budget-bits``).

    table = analyze(model, plan, ids)                  # {name: {"params", "kl_int4", "kl_int8"}}
    bits = allocate(plan, table, budget_bits=5.0)      # {name: 4 | 8 | 16}

Sensitivity is measured, not guessed: each decoder linear alone is rounded to int4 (RTN on the
configured grid) and the model's next-token distributions are compared with the float model's (mean
KL over the analysis tokens). Only the layers from that linear's onwards are re-run, from cached
inputs. The int8 figure is estimated as int4's × (15/255)², the ratio of the two grids' quantization
noise powers, rather than measured: it halves the analysis time, and int8 losses are tiny anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from . import calibrate  # looked up at call time: a test's monkeypatch of calibrate.capture must not stick
from .calibrate import layer_forward
from .grid import Grid, rtn
from .layers import Plan, decoder_layers

log = logging.getLogger(__name__)

INT8_NOISE_RATIO = (15 / 255) ** 2


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


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), -1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


@torch.no_grad()
def analyze(model: nn.Module, plan: Plan, ids: torch.Tensor) -> dict[str, dict[str, Any]]:
    """KL vs the float model when only one decoder linear is rounded to int4, for every decoder
    linear of ``plan`` (its grid's group size and symmetry)."""
    inputs, kwargs = calibrate.capture(model, ids, ids.shape[0], all_layers=True)
    ref = torch.log_softmax(run_from(model, 0, inputs[0], kwargs).float(), -1)
    table: dict[str, dict[str, Any]] = {}
    linears = [t for t in plan.targets.values() if t.layer is not None]
    for t in track(linears, "sensitivity", total=len(linears)):
        w = t.module.weight
        orig = w.detach().clone()
        grid4 = Grid(4, t.grid.group_size, t.grid.symmetric)
        try:
            w.copy_(rtn(orig, grid4, name=t.name).dequantize())
            kl4 = _kl(ref, run_from(model, t.layer, inputs[t.layer], kwargs))
        finally:
            w.copy_(orig)
        table[t.name] = {"params": w.numel(), "kl_int4": kl4, "kl_int8": kl4 * INT8_NOISE_RATIO}
    log.info("sensitivity measured on %d tokens for %d layers", ids.numel(), len(table))
    return table


def allocate(plan: Plan, table: dict[str, dict[str, Any]], budget_bits: float) -> dict[str, int]:
    """Bits (4, 8 or 16) per analysed layer minimizing the summed estimated KL with the average
    storage cost (scales included, 16-bit counted at 16) within ``budget_bits``.

    Greedy on the convex hull of each layer's (cost, loss) options: repeatedly take the upgrade with
    the largest loss reduction per extra bit that still fits.
    """
    names = list(table)
    cost: dict[str, dict[int, float]] = {}
    loss: dict[str, dict[int, float]] = {}
    for n in names:
        g = plan.targets[n].grid
        p = table[n]["params"]
        cost[n] = {4: p * Grid(4, g.group_size, g.symmetric).bits_per_weight(),
                   8: p * Grid(8, g.group_size, g.symmetric).bits_per_weight(), 16: p * 16.0}
        loss[n] = {4: table[n]["kl_int4"], 8: table[n]["kl_int8"], 16: 0.0}
    total_params = sum(table[n]["params"] for n in names)
    budget = budget_bits * total_params
    floor = sum(cost[n][4] for n in names)
    if floor > budget:
        raise ConfigError(f"quantize.budget_bits: {budget_bits} is below the {floor / total_params:.3f} bits/weight "
                          f"that int4 on every layer already costs (scales included)")
    choice = {n: 4 for n in names}
    spent = floor
    while True:
        best: tuple[float, str, int] | None = None
        for n in names:
            cur = choice[n]
            for nxt in (b for b in (8, 16) if b > cur):
                extra = cost[n][nxt] - cost[n][cur]
                gain = (loss[n][cur] - loss[n][nxt]) / extra
                if spent + extra <= budget and (best is None or gain > best[0]):
                    best = (gain, n, nxt)
        if best is None or best[0] <= 0:
            break
        _, n, nxt = best
        spent += cost[n][nxt] - cost[n][choice[n]]
        choice[n] = nxt
    log.info("budget %.2f bits/weight: %.3f used", budget_bits, spent / total_params)
    return choice


def budget_summary(plan: Plan, table: dict[str, dict[str, Any]], choice: dict[str, int]) -> dict[str, Any]:
    params = sum(table[n]["params"] for n in choice)
    bits = 0.0
    for n, b in choice.items():
        g = plan.targets[n].grid
        bits += table[n]["params"] * (16.0 if b == 16 else Grid(b, g.group_size, g.symmetric).bits_per_weight())
    return {"bits_per_weight": bits / params, "estimated_kl": sum(table[n][f"kl_int{b}"] if b < 16 else 0.0
                                                                 for n, b in choice.items()),
            "layers": {str(b): sum(1 for v in choice.values() if v == b) for b in (4, 8, 16)}}
