"""Which quantized layers carry the loss: the KL recovered when each one alone is put back.

Measurement (said in every output): for each quantized tensor (or decoder block), its weights in the
artifact model are replaced by the reference model's, the held-in tokens are run again, and the KL
against the reference is compared with the artifact's own: ``recovered = KL(artifact) - KL(with that
one restored)``. Only decoder layers from the restored one onwards are re-run, from the inputs captured
once from the artifact model (quantize.sensitivity.run_from); a restored embedding/output table runs
the whole model. ``share`` is recovered / KL(artifact); shares need not sum to 100% (interactions).

``granularity="auto"`` measures every tensor when there are at most ``max_tensor_runs``; otherwise
every decoder block first, then the tensors inside the top blocks (those holding ``refine_share`` of
the blocks' recoveries, at most 4), so SmolLM2's 210 linears cost 30 + 28 partial runs, not 210.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

import torch

from ..progress import track
from ..quantize import calibrate
from ..quantize.layers import decoder_layers
from ..quantize.modules import get_module
from ..quantize.sensitivity import run_from
from .config import DiagnoseConfig
from .measure import DiagnosisTokens

log = logging.getLogger(__name__)
MEASUREMENT = ("KL recovered when the layer alone is put back to the reference's weights "
               "(KL of the artifact minus KL with that layer restored), on the same tokens")
_MAX_REFINED_BLOCKS = 4


@dataclasses.dataclass
class Unit:
    """One measured thing: a tensor, or a whole decoder block (all its quantized tensors at once)."""

    label: str  # module name, or "block 12" for a block
    names: list[str]  # quantized module names restored together
    block: int | None  # decoder layer index (None: embedding/output table)
    kind: str  # "tensor" | "block"
    params: int
    kl_restored: float = 0.0
    recovered: float = 0.0
    share: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Attribution:
    kl: float  # the artifact's KL against the reference, PyTorch, these tokens
    tokens: int
    data: str
    units: list[Unit]  # ranked, largest recovery first
    blocks: list[Unit]  # block-level figures when measured (auto on large models), else []
    measurement: str = MEASUREMENT

    def to_dict(self) -> dict:
        return {"kl": self.kl, "tokens": self.tokens, "data": self.data, "measurement": self.measurement,
                "units": [u.to_dict() for u in self.units], "blocks": [u.to_dict() for u in self.blocks]}


def block_of(name: str, prefix: str) -> int | None:
    """Decoder layer index of module ``name`` (``model.layers.12.mlp.up_proj`` -> 12), None outside."""
    head = prefix + "."
    if not name.startswith(head):
        return None
    idx = name[len(head):].split(".", 1)[0]
    return int(idx) if idx.isdigit() else None


@contextlib.contextmanager
def restored(model, reference, names: list[str]) -> Iterator[None]:
    """Within the block, ``names``' weights in ``model`` are the reference's (then put back exactly)."""
    saved = []
    with torch.no_grad():
        for n in names:
            w = get_module(model, n).weight
            saved.append((w, w.detach().clone()))
            w.copy_(get_module(reference, n).weight)
    try:
        yield
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)


@torch.no_grad()
def attribute(model, reference, names: list[str], toks: DiagnosisTokens, cfg: DiagnoseConfig,
              ref_logp: list[torch.Tensor] | None = None) -> Attribution:
    """Rank the quantized modules ``names`` of ``model`` by the KL their restoration recovers."""
    prefix, _ = decoder_layers(model)
    ref_logp = ref_logp if ref_logp is not None else toks.reference_logp(reference)
    captured = [calibrate.capture(model, b.ids, b.ids.shape[0], all_layers=True) for b in toks.batches]

    def kl_from(start: int | None) -> float:
        if start is None:
            return toks.kl(ref_logp, lambda i, b: model(b.ids, use_cache=False).logits)
        return toks.kl(ref_logp, lambda i, b: run_from(model, start, captured[i][0][start], captured[i][1]))

    base = kl_from(0)
    params = {n: get_module(model, n).weight.numel() for n in names}
    blocks: dict[int | None, list[str]] = {}
    for n in names:
        blocks.setdefault(block_of(n, prefix), []).append(n)

    def measure(units: list[Unit], what: str) -> None:
        for u in track(units, what, total=len(units)):
            with restored(model, reference, u.names):
                u.kl_restored = kl_from(u.block)
            u.recovered = base - u.kl_restored
            u.share = u.recovered / base if base > 0 else 0.0

    def tensor_units(ns: list[str]) -> list[Unit]:
        return [Unit(n, [n], block_of(n, prefix), "tensor", params[n]) for n in ns]

    tables = blocks.pop(None, [])
    mode = cfg.granularity
    if mode == "auto":
        mode = "tensor" if len(names) <= cfg.max_tensor_runs else "refine"
    block_units: list[Unit] = []
    if mode == "tensor":
        units = tensor_units([n for ns in blocks.values() for n in ns])
        measure(units, "diagnose: tensors")
    else:
        block_units = [Unit(f"block {i}", ns, i, "block", sum(params[n] for n in ns)) for i, ns in blocks.items()]
        measure(block_units, "diagnose: blocks")
        units = list(block_units)
        if mode == "refine":
            ranked = sorted(block_units, key=lambda u: -u.recovered)
            positive = sum(max(u.recovered, 0.0) for u in ranked)
            chosen, acc = [], 0.0
            for u in ranked[:_MAX_REFINED_BLOCKS]:
                if acc >= cfg.refine_share * positive or u.recovered <= 0:
                    break
                chosen.append(u)
                acc += u.recovered
            units = [u for u in block_units if u not in chosen]
            refined = tensor_units([n for u in chosen for n in u.names])
            measure(refined, "diagnose: tensors of the top blocks")
            units += refined
    tab = tensor_units(tables)
    measure(tab, "diagnose: embedding/output tables")
    units += tab
    units.sort(key=lambda u: -u.recovered)
    log.info("diagnose: KL %.4g on %d tokens; top %s recovers %.1f%%", base, toks.count,
             units[0].label if units else "-", 100 * units[0].share if units else 0)
    return Attribution(base, toks.count, toks.data, units, block_units)
