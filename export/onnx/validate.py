"""Every ONNX export proves itself: onnxruntime vs the PyTorch model of the same artifact, on fixed ids.

    figures = validate_onnx(decoder, model, tokenizer, tolerance, check_tokens=64)
    figures["prefill"]["top1_agreement"], figures["kv_cache"]["max_abs"]

Two outputs are compared: ``prefill`` (every position of one pass) and ``kv_cache`` (the second half of
the ids fed one token at a time through the cache, as generation does). For each: the largest absolute
logit difference (and where), mean KL(PyTorch || onnxruntime), top-1 agreement. Beyond the tolerance
-> ExportMismatchError naming the output, the worst position and its token.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from compress.errors import ExportMismatchError
from compress.logits import compare as compare_logits

from .config import Tolerance

log = logging.getLogger(__name__)


def check_ids(tokenizer, n: int) -> list[int]:
    from compress.data import check_ids as fixed_ids

    return fixed_ids(tokenizer, n)[:n]


def torch_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """max |diff| (and its position), mean KL(ref || got), top-1 agreement over rows
    (:func:`compress.logits.compare`, float64)."""
    c = compare_logits(ref, got)
    return {"positions": c.positions, "max_abs": c.max_abs, "worst_position": c.worst_abs_position,
            "kl": c.kl_mean, "kl_max": c.kl_max, "top1_agreement": c.top1_agreement,
            "first_disagreement": c.first_disagreement, "logit_range": c.logit_range}


def reference_logits(model, tokenizer, check_tokens: int) -> np.ndarray:
    """PyTorch's logits on the check ids: computed before the export so that the model can be freed
    before onnxruntime loads the file (pass them to :func:`validate_onnx` as ``reference``)."""
    return torch_logits(model, check_ids(tokenizer, check_tokens))


def validate_onnx(decoder, model, tokenizer, tol: Tolerance, *, check_tokens: int, where: str,
                  reference: np.ndarray | None = None) -> dict[str, Any]:
    """Compare and judge; returns the figures for the manifest (with the tolerance used). ``reference``:
    :func:`reference_logits` computed earlier (``model`` is then not used)."""
    ids = check_ids(tokenizer, check_tokens)
    ref = torch_logits(model, ids) if reference is None else reference
    split = len(ids) // 2
    outputs = {"prefill": (decoder.logits(ids), 0),
               "kv_cache": (decoder.cached_logits(ids, split), split - 1)}
    figures: dict[str, Any] = {"tokens": len(ids), "tolerance": {"min_top1": tol.min_top1, "max_kl": tol.max_kl,
                                                                 "max_abs": tol.max_abs}}
    for name, (got, offset) in outputs.items():
        r = compare(ref[offset:], got)
        r["worst_position"] += offset
        if r["first_disagreement"] is not None:
            r["first_disagreement"] += offset
        figures[name] = r
        log.info("%s %s: max |diff| %.3g, KL %.3g, top-1 %.2f%%", where, name, r["max_abs"], r["kl"],
                 100 * r["top1_agreement"])
    for name in outputs:
        _judge(figures[name], name, tol, ids, where)
    return figures


def score(decoder, ids: list[int], ref: np.ndarray, *, full: bool) -> dict[str, dict[str, Any]]:
    """:func:`compare` of the prefill logits (and, ``full``, of the KV-cache path) with ``ref``."""
    out = {"prefill": compare(ref, decoder.logits(ids))}
    if full:
        split = len(ids) // 2
        out["kv_cache"] = compare(ref[split - 1:], decoder.cached_logits(ids, split))
    return out


def problems(r: dict[str, Any], tol: Tolerance) -> list[str]:
    """What in the figures ``r`` (one output of :func:`compare`) is beyond ``tol``; empty when it passes."""
    found = []
    if r["top1_agreement"] < tol.min_top1:
        found.append(f"top-1 agreement {r['top1_agreement']:.2%} < {tol.min_top1:.2%} (first disagreement at "
                     f"position {r['first_disagreement']})")
    if r["kl"] > tol.max_kl:
        found.append(f"KL {r['kl']:.3g} > {tol.max_kl:.3g}")
    if tol.max_abs is not None and r["max_abs"] > tol.max_abs:
        found.append(f"max |logit diff| {r['max_abs']:.3g} > {tol.max_abs:.3g}")
    return found


def _judge(r: dict[str, Any], output: str, tol: Tolerance, ids: list[int], where: str) -> None:
    found = problems(r, tol)
    if found:
        pos = r["worst_position"]
        raise ExportMismatchError(
            f"{where}: output 'logits' ({output}) disagrees with PyTorch: {'; '.join(found)}; worst position "
            f"{pos} (token id {ids[pos]}, max |diff| {r['max_abs']:.3g})")
