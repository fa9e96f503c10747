"""The keep-at-8-bits options measured together, not summed: the predicted KL of a fix is the fix's own KL.

Per-layer recoveries do not add up: put back 20 layers one at a time and each recovers its share of a
loss the other 19 still carry, so their sum over-promises (SmolLM2 int4 RTN g64: the sum predicted
KL 0.177, the applied artifact measured 0.209 in llama.cpp). So an option is measured as what
``--apply`` will write: its layers' weights in the artifact model are replaced by exactly the int8
weights write_keep8 stores (RTN of the reference's weights on fixes.int8_meta's grid, dequantized), all
at once, and the tokens are run through the whole model. What remains between that figure and the
runtime's is the export's own rounding.

    w8 = Int8Weights(layers, weight_getter(reference))
    kl = joint_kl(model, w8, option.tensors, toks, ref_logp)

Options are measured from the additive suggestion onwards (one forward pass each) until one reaches
the target share; the options measured carry ``basis="measured"``, the others keep the additive estimate.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch

from ..quantize.modules import get_module
from .fixes import KeepOption, int8_fix
from .measure import DiagnosisTokens

log = logging.getLogger(__name__)


class Int8Weights:
    """``name -> the float weight the keep8 fix stores for it`` (computed once per tensor)."""

    def __init__(self, layers: dict[str, dict[str, Any]], reference_weight: Callable[[str], torch.Tensor]):
        self.layers, self.reference_weight = layers, reference_weight
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = int8_fix(self.layers[name], self.reference_weight(name), name).dequantize()
        return self._cache[name]


@contextlib.contextmanager
def substituted(model, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, each named module's weight is ``weights[name]`` (then put back exactly)."""
    saved = []
    with torch.no_grad():
        for n, w in weights.items():
            p = get_module(model, n).weight
            saved.append((p, p.detach().clone()))
            p.copy_(w.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, orig in reversed(saved):  # reversed: a tied table restored last is restored right
                p.copy_(orig)


@torch.no_grad()
def joint_kl(model, w8: Int8Weights, tensors: list[str], toks: DiagnosisTokens,
             ref_logp: list[torch.Tensor]) -> float:
    """KL(reference || artifact with ``tensors`` at their int8 fix weights), whole forward passes."""
    with substituted(model, {n: w8(n) for n in tensors}):
        return toks.kl(ref_logp, lambda i, b: model(b.ids, use_cache=False).logits)


def measure_options(model, w8: Int8Weights, options: list[KeepOption], kl_before: float, target_share: float,
                    toks: DiagnosisTokens, ref_logp: list[torch.Tensor], *, start: int,
                    keep: int | None = None) -> int:
    """Measure options (in place: ``predicted_kl``, ``basis``) from the ``start``-th onwards, upwards while
    the measured recovery falls short of ``target_share``, downwards while the one below still reaches it;
    with ``keep``, that option alone. Returns the suggested option's ``n``."""
    by_n = {o.n: o for o in options}

    def measured(n: int) -> KeepOption:
        o = by_n[n]
        if o.basis != "measured":
            o.additive_kl = o.predicted_kl
            o.predicted_kl = joint_kl(model, w8, o.tensors, toks, ref_logp)
            o.basis = "measured"
            log.info("diagnose: keep %d at 8 bits: KL %.4g measured (additive estimate %.4g)", n, o.predicted_kl,
                     o.additive_kl)
        return o

    def reaches(n: int) -> bool:
        return kl_before - measured(n).predicted_kl >= target_share * kl_before

    if keep is not None:
        measured(keep)
        return keep
    n, last = max(1, min(start, len(options))), len(options)
    if reaches(n):
        while n > 1 and reaches(n - 1):
            n -= 1
        return n
    while n < last and not reaches(n + 1):
        n += 1
    return min(n + 1, last)
