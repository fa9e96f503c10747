"""Fixes with their predicted effect and cost, from the attribution.

- keep8: the fewest ranked units whose restoration recovers ``target_share`` of the loss, re-quantized
  to int8 (RTN from the reference's weights, symmetric, group 32 where the width allows: a grid GGUF
  Q8_0 and MatMulNBits both carry exactly). First estimate (``basis="additive"``): KL(artifact) - sum of
  their recoveries x (1 - r), r = int8's quantization noise power relative to their grid's
  (sensitivity.noise_ratio), recoveries assumed additive; it over-promises when many layers change
  together, so the options around the suggestion are then measured with their int8 weights in place
  (joint.py, ``basis="measured"``) and the suggestion is the fewest whose measured KL reaches the share.
- group: half the group size everywhere; each unit's recovery scaled by the drop in RTN weight error
  power (measured on the reference's weights, no forward pass) - an estimate, not a measurement.
- tables: the embedding/output table, when quantized, is ranked like any layer (keep8 covers it).
- calibration: reported with what was used; its effect is not predicted (it needs a re-run).

Costs are bytes of the artifact's own format (FORMAT.md): qweight + float16 scales (+ zeros).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..quantize.format import layer_spec, qweight_spec
from ..quantize.grid import Grid, rtn
from ..quantize.sensitivity import noise_ratio
from .attribute import Attribution, Unit

FIX_GROUP = 32  # int8 group of the keep8 fix (GGUF Q8_0's block; a MatMulNBits block)


def stored_bytes(meta: dict[str, Any], name: str = "") -> int:
    """Bytes one quantized layer takes in the artifact (qweight, scales, zeros)."""
    bits, g, sym, (out_f, in_f) = layer_spec(name, meta)
    _, qshape = qweight_spec(bits, sym, (out_f, in_f))
    groups = out_f * (in_f // g)
    return qshape[0] * qshape[1] + 2 * groups + (0 if sym else groups)


def int8_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The layer entry the keep8 fix writes for a layer now described by ``meta``."""
    in_f = int(meta["shape"][1])
    g = FIX_GROUP if in_f % FIX_GROUP == 0 else in_f
    return {**meta, "bits": 8, "group_size": g, "symmetric": True, "method": "rtn", "act_order": False}


def int8_fix(meta: dict[str, Any], weight: torch.Tensor, name: str):
    """The QTensor the keep8 fix stores for a layer now described by ``meta`` (RTN of ``weight``)."""
    return rtn(weight.float(), Grid(8, int(int8_meta(meta)["group_size"]), True), name=name)


@dataclasses.dataclass
class KeepOption:
    n: int
    units: list[str]
    tensors: list[str]
    extra_bytes: int
    predicted_kl: float
    basis: str = "additive"  # "measured": the option's own KL, its int8 weights in place (joint.py)
    additive_kl: float | None = None  # the additive estimate, kept once measured

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def keep8_options(att: Attribution, layers: dict[str, dict[str, Any]], target_share: float,
                  keep: int | None = None) -> tuple[list[KeepOption], int]:
    """Cumulative keep-at-8-bits options over every ranked unit that recovers anything, and the one the
    additive estimate suggests (``keep`` when given): joint.measure_options starts there."""
    ranked = [u for u in att.units if u.recovered > 0]
    out: list[KeepOption] = []
    kl, extra, tensors = att.kl, 0, []
    for i, u in enumerate(ranked):
        for n in u.names:
            meta = layers[n]
            if int(meta["bits"]) >= 8:
                continue
            tensors.append(n)
            extra += stored_bytes(int8_meta(meta), n) - stored_bytes(meta, n)
        kl -= u.recovered * (1 - _unit_noise_ratio(u, layers))
        out.append(KeepOption(i + 1, [x.label for x in ranked[:i + 1]], list(tensors), extra, max(kl, 0.0)))
    if not out:
        return [], 0
    if keep is not None:
        suggested = min(keep, len(out))
    else:
        suggested = next((o.n for o in out if att.kl - o.predicted_kl >= target_share * att.kl), len(out))
    return out, suggested


def shown_options(options: list[KeepOption], suggested: int, limit: int = 8) -> list[KeepOption]:
    """The first ``limit`` options, and every measured one up to the suggestion."""
    return [o for o in options if o.n <= max(limit, suggested)]


def _unit_noise_ratio(u: Unit, layers: dict[str, dict[str, Any]]) -> float:
    bits = min(int(layers[n]["bits"]) for n in u.names)
    return noise_ratio(bits, 8) if bits < 8 else 1.0


@torch.no_grad()
def group_option(att: Attribution, layers: dict[str, dict[str, Any]], reference_weight) -> dict[str, Any] | None:
    """Predicted effect of halving every layer's group size (None when already at 32 or int8)."""
    low = {n: m for n, m in layers.items() if int(m["bits"]) < 8}
    if not low:
        return None
    gs = {layer_spec(n, m)[1] for n, m in low.items()}
    g = max(gs)
    new_g = g // 2
    if new_g < 32:
        return None
    ratio: dict[str, tuple[float, float]] = {}
    extra = 0
    for n, m in low.items():
        bits, cur_g, sym, shape = layer_spec(n, m)
        if cur_g != g or shape[1] % new_g:
            continue
        w = reference_weight(n)
        e_cur = float((rtn(w, Grid(bits, cur_g, sym)).dequantize() - w).pow(2).sum())
        e_new = float((rtn(w, Grid(bits, new_g, sym)).dequantize() - w).pow(2).sum())
        ratio[n] = (e_cur, e_new)
        extra += stored_bytes({**m, "group_size": new_g}, n) - stored_bytes(m, n)
    kl = att.kl
    for u in att.units:
        cur = sum(ratio[n][0] for n in u.names if n in ratio)
        new = sum(ratio[n][1] for n in u.names if n in ratio)
        if cur > 0:
            kl -= u.recovered * (1 - new / cur)
    return {"group_size": g, "new_group_size": new_g, "tensors": len(ratio), "extra_bytes": extra,
            "predicted_kl": max(kl, 0.0),
            "basis": "each layer's recovery scaled by its RTN weight-error power at the new group size "
                     "(reference weights): an estimate"}


def calibration_note(info: dict[str, Any]) -> str:
    """What calibration the artifact used and what to try; effect not predicted."""
    cfg = info.get("config") or {}
    method = str(cfg.get("scheme", "")).split("-")[-1]
    if method in ("gptq", "awq"):
        return (f"calibration: {cfg.get('samples')} x {cfg.get('seq_len')} tokens of {cfg.get('calib')}; more "
                f"(--samples {2 * int(cfg.get('samples') or 128)}) or text closer to your use may help - effect not "
                "predicted (needs a re-run of quantize)")
    return ("calibration: none (RTN); --scheme int4-gptq on the same grid usually recovers part of the loss - "
            "effect not predicted (needs a re-run of quantize)")
