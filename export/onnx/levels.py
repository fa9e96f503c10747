"""MatMulNBits ``accuracy_level`` per node, chosen by measurement (``OnnxConfig.accuracy_level="auto"``).

    choice = choose_levels(nbits_nodes(model), measure)
    choice.levels["lm_head"], choice.levels["layers.3.mlp.down_proj"]     # 4 or 0
    choice.report()                                                       # what the manifest records

Level 4 quantizes each node's activations to int8 per block inside the kernel: the fast CPU path (an 8-bit
262k x 640 lm_head: ~8 ms at level 4, ~1 s at level 0, which is onnxruntime's dequantize-then-multiply
fallback). Level 0 computes with float activations. Start with 4 everywhere; if the file then fails the
tolerance, measure each *kind* of node (the lm_head, every layer's down_proj, ...) at level 0 with the
rest at 4 (one prefill pass each, cheap), and give level 0 to the kinds in the order that helped most,
re-checking after each, until the file passes. Kinds, not single nodes: a kind shares its input's
statistics (the residual stream after a norm, the MLP's product), which is what int8 activations round.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable

import onnx

from .config import OnnxConfig

log = logging.getLogger(__name__)

FAST, FLOAT = 4, 0
_LAYER = re.compile(r"^layers\.\d+\.")


def initial_level(cfg: OnnxConfig) -> int:
    """The level every MatMulNBits node is built with: the fixed one, or 4 where ``auto`` starts."""
    return FAST if cfg.fixed_level is None else cfg.fixed_level


def node_kind(node: str) -> str:
    """``layers.7.mlp.down_proj`` -> ``mlp.down_proj``; ``lm_head`` stays ``lm_head``."""
    return _LAYER.sub("", node)


def nbits_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """MatMulNBits node name -> its current accuracy_level."""
    return {n.name: _level(n) for n in model.graph.node if n.op_type == "MatMulNBits"}


def set_levels(model: onnx.ModelProto, levels: dict[str, int]) -> None:
    """Give each named MatMulNBits node its level (in place)."""
    for n in model.graph.node:
        if n.op_type == "MatMulNBits" and n.name in levels:
            for a in n.attribute:
                if a.name == "accuracy_level":
                    a.i = int(levels[n.name])
                    break
            else:
                n.attribute.append(onnx.helper.make_attribute("accuracy_level", int(levels[n.name])))


def slow_float_nodes(model: onnx.ModelProto, levels: dict[str, int]) -> list[str]:
    """8-bit MatMulNBits nodes at level 0: onnxruntime's CPU fallback dequantizes the whole matrix per call
    (262k x 640: ~1 s, against ~8 ms at level 4 and ~20 ms as a float32 MatMul)."""
    return sorted(n.name for n in model.graph.node if n.op_type == "MatMulNBits" and levels.get(n.name) == 0
                  and next((a.i for a in n.attribute if a.name == "bits"), 4) == 8)


def _level(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)


@dataclasses.dataclass(frozen=True)
class Measure:
    """One file's agreement with PyTorch: worst top-1 and KL over the outputs checked."""

    ok: bool
    top1: float
    kl: float

    def figures(self) -> dict[str, float | bool]:
        return {"passes": self.ok, "top1_agreement": round(self.top1, 6), "kl": float(f"{self.kl:.4g}")}


@dataclasses.dataclass
class LevelChoice:
    levels: dict[str, int]  # node -> level
    mode: str  # "fixed" | "auto"
    start: Measure | None = None  # auto: every node at level 4
    probes: dict[str, Measure] = dataclasses.field(default_factory=dict)  # kind at 0, the rest at 4
    float_kinds: list[str] = dataclasses.field(default_factory=list)  # given level 0, in that order
    final: Measure | None = None
    slow: list[str] = dataclasses.field(default_factory=list)  # see slow_float_nodes

    @property
    def int8_activations(self) -> bool:
        return any(v > 0 for v in self.levels.values())

    def report(self) -> dict[str, object]:
        by_kind: dict[str, set[int]] = {}
        for node, level in self.levels.items():
            by_kind.setdefault(node_kind(node), set()).add(level)
        out: dict[str, object] = {
            "mode": self.mode, "nodes": dict(sorted(self.levels.items())),
            "by_kind": {k: (sorted(v)[0] if len(v) == 1 else sorted(v)) for k, v in sorted(by_kind.items())}}
        if self.mode == "auto":
            out["start_all_level_4"] = self.start.figures() if self.start else None
            out["probes_kind_at_level_0"] = {k: m.figures() for k, m in self.probes.items()}
            out["float_kinds"] = list(self.float_kinds)
            out["final"] = self.final.figures() if self.final else None
        if self.slow:
            out["slow_8bit_float_nodes"] = list(self.slow)
        return out


def choose_levels(nodes: dict[str, int] | list[str], measure: Callable[[dict[str, int], bool], Measure]) -> LevelChoice:
    """Level 4 on every node unless the file fails; then level 0 on the kinds that need it, most helpful
    first. ``measure(levels, full)`` scores the file with those levels (``full=False``: one prefill pass,
    for ranking; ``True``: everything the final validation checks). Ends with every node at 0 if nothing
    less passes: that file is then judged at the exact tolerance, which it has to meet."""
    names = sorted(nodes)
    levels = {n: FAST for n in names}
    start = measure(levels, True)
    choice = LevelChoice(levels, "auto", start=start, final=start)
    if start.ok or not names:
        return choice
    kinds = sorted({node_kind(n) for n in names})
    for kind in kinds:
        choice.probes[kind] = measure({n: FLOAT if node_kind(n) == kind else FAST for n in names}, False)
        log.info("accuracy_level: %s at 0, the rest at 4: top-1 %.2f%%, KL %.3g", kind,
                 100 * choice.probes[kind].top1, choice.probes[kind].kl)
    # the kind whose float compute removes most of the error first (KL is finer-grained than top-1)
    order = sorted(kinds, key=lambda k: (choice.probes[k].kl, -choice.probes[k].top1))
    for kind in order:
        choice.float_kinds.append(kind)
        choice.levels = {n: FLOAT if node_kind(n) in choice.float_kinds else FAST for n in names}
        if not choice.int8_activations:
            choice.final = None  # every node in float: the caller's exact validation decides
            break
        choice.final = measure(choice.levels, True)
        if choice.final.ok:
            break
    log.info("accuracy_level: level 0 for %s, 4 elsewhere", ", ".join(choice.float_kinds) or "none")
    return choice


def fixed_levels(nodes: dict[str, int] | list[str], level: int) -> LevelChoice:
    """Every node at ``level`` (mode "none" when the file has no MatMulNBits node)."""
    return LevelChoice({n: level for n in sorted(nodes)}, "fixed" if nodes else "none")
