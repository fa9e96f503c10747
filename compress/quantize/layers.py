"""What gets quantized: the plan, and every check that must fail before calibration starts.

    plan = make_plan(model, QuantConfig(scheme="int4-gptq", group_size=64))
    plan.targets["model.layers.0.mlp.down_proj"].grid   # Grid(bits=4, group_size=64, symmetric=True)
    plan.skipped                                         # {name: reason}

Decoder linears get the scheme's method; the embedding table and an untied ``lm_head`` are explicit
choices (``keep``/``int8``/``int4``) quantized by round-to-nearest, because no calibrated method
models a lookup table or the final projection's loss better than its own rounding.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleLayerError, ModelLoadError
from .config import QuantConfig
from .grid import Grid


@dataclasses.dataclass
class Target:
    name: str  # module name; the tensor is NAME.weight in the HF state dict
    module: nn.Module  # nn.Linear or nn.Embedding
    kind: str  # "linear" | "embeddings" | "lm_head"
    layer: int | None  # decoder layer index for decoder linears
    grid: Grid
    method: str  # "rtn" | "gptq" | "awq"
    activations: str | None = None  # "int8-dynamic" for w8a8 linears

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape)


@dataclasses.dataclass
class Plan:
    targets: dict[str, Target]
    skipped: dict[str, str]
    tied: bool
    embeddings_name: str
    lm_head_name: str | None

    def by_layer(self) -> dict[int, dict[str, Target]]:
        out: dict[int, dict[str, Target]] = defaultdict(dict)
        for t in self.targets.values():
            if t.layer is not None:
                out[t.layer][t.name] = t
        return dict(out)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's layer list and its module name (``model.layers`` for Llama and Gemma)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    if best is None:
        raise IncompatibleLayerError(f"{type(model).__name__}: no decoder layer list found (nn.ModuleList)")
    return best


def check_not_quantized(model: nn.Module) -> None:
    """Refuse a model that already went through this stage (or carries another quantizer's marker):
    quantizing dequantized integers again compounds two rounding errors."""
    info = getattr(model, "compress_quantization", None)
    if info is not None:
        raise ModelLoadError(f"{type(model).__name__}: already quantized by compress ({info.get('scheme')}); "
                             "quantize the original model instead")
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc:
        method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", qc)
        raise ModelLoadError(f"{type(model).__name__}: already quantized ({method}); quantize the original "
                             "model instead")


def check_finite(model: nn.Module) -> None:
    """Name every tensor holding NaN or inf: one would poison the scales and every later layer."""
    bad = []
    for name, p in model.named_parameters():
        finite = torch.isfinite(p)
        if not bool(finite.all()):
            nans = int(torch.isnan(p).sum())
            bad.append(f"{name} ({nans} NaN, {int((~finite).sum()) - nans} inf)")
    if bad:
        raise ModelLoadError(f"non-finite weights in {len(bad)} tensor(s): {', '.join(bad)}")


def make_plan(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Targets and skips for ``cfg``; raises IncompatibleLayerError listing every layer the group size
    does not fit (unless ``cfg.skip_incompatible``) before any calibration work."""
    prefix, layers = decoder_layers(model)
    exclude = re.compile(cfg.exclude) if cfg.exclude else None
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    names = {id(m): n for n, m in model.named_modules()}
    emb_name, head_name = names[id(emb)], (names[id(head)] if head is not None else None)
    targets: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    misfits: list[tuple[str, int]] = []

    def add(name: str, module: nn.Module, kind: str, layer: int | None, bits: int, method: str,
            activations: str | None = None) -> None:
        width = module.weight.shape[1]
        group = cfg.effective_group_size or width
        if exclude is not None and exclude.search(name):
            skipped[name] = f"excluded by --exclude {cfg.exclude!r}"
        elif width % group or (bits == 4 and width % 2):
            misfits.append((name, width))
            skipped[name] = f"group size {group} does not divide its input width {width}"
        else:
            targets[name] = Target(name, module, kind, layer, Grid(bits, group, cfg.symmetric), method, activations)

    if cfg.embeddings != "keep":
        add(emb_name, emb, "embeddings", None, _bits(cfg.embeddings), "rtn")
    for i, layer in enumerate(layers):
        for sub, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                add(f"{prefix}.{i}.{sub}", mod, "linear", i, cfg.bits, cfg.method, cfg.activations)
    if tied:
        if cfg.lm_head != cfg.embeddings:
            raise IncompatibleLayerError(
                f"{head_name}: tied to {emb_name} (one matrix), so --lm-head and --embeddings must match "
                f"(got --embeddings {cfg.embeddings}, --lm-head {cfg.lm_head})")
    elif head is not None and cfg.lm_head != "keep":
        add(head_name, head, "lm_head", None, _bits(cfg.lm_head), "rtn")
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name not in targets and name not in skipped and mod is not head:
            skipped[name] = "outside the decoder layers"
    if misfits and not cfg.skip_incompatible:
        group = cfg.effective_group_size
        fit = [g for g in (128, 64, 32, 16) if all(w % g == 0 for _, w in misfits)]
        hint = f"use --group-size {fit[0]} or " if fit else "use "
        raise IncompatibleLayerError(
            f"group size {group} does not divide the input width of {len(misfits)} layer(s): "
            f"{compact_names(misfits)}; {hint}--skip-incompatible to leave them in float")
    if cfg.budget_bits is not None:
        _check_budget(targets, cfg.budget_bits)
    return Plan(targets, skipped, tied, emb_name, head_name)


def _check_budget(targets: dict[str, Target], budget_bits: float) -> None:
    """--budget-bits below int4 everywhere is impossible: say so before any analysis runs."""
    linears = [t for t in targets.values() if t.kind == "linear"]
    params = sum(t.module.weight.numel() for t in linears)
    floor = sum(t.module.weight.numel() * t.grid.bits_per_weight() for t in linears) / max(params, 1)
    if floor > budget_bits:
        raise ConfigError(f"quantize.budget_bits: {budget_bits} is below the {floor:.3f} bits/weight that int4 on "
                          "every layer already costs (scales included)")


def _bits(precision: str) -> int:
    return {"int8": 8, "int4": 4}[precision]


def compact_names(items: list[tuple[str, int]]) -> str:
    """Every name, with runs of decoder-layer indices folded: ``model.layers.[0-29].mlp.up_proj (576)``."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    singles: list[str] = []
    for name, width in items:
        m = re.search(r"\.(\d+)\.", name)
        if m:
            groups[(name[:m.start(1)] + "{}" + name[m.end(1):], width)].append(int(m.group(1)))
        else:
            singles.append(f"{name} ({width})")
    out = []
    for (pattern, width), idx in groups.items():
        out.append(f"{pattern.format(_ranges(sorted(idx)))} ({width})")
    return ", ".join(singles + out)


def _ranges(idx: list[int]) -> str:
    if len(idx) == 1:
        return str(idx[0])
    runs, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            runs.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return "[" + ",".join(runs) + "]"
