"""What gets quantized: the plan, and every check that must fail before calibration starts.

    plan = make_plan(model, QuantConfig(scheme="int4-gptq", group_size=64))
    plan.targets["model.layers.0.mlp.down_proj"].grid   # Grid(bits=4, group_size=64, symmetric=True)
    plan.skipped                                         # {name: reason}

Decoder linears get the scheme's method; the embedding table and an untied ``lm_head`` are explicit
choices (``keep``/``int8``/``int5``/``int4``, or ``auto``: chosen by ``--budget-bits``). The output
projection (an untied ``lm_head``, or the tied table) is fitted by GPTQ to the final hidden states when
the scheme is GPTQ (core._gptq_head); an untied embedding table is a lookup with no input activations and
is rounded to nearest, as every table is under RTN and AWQ. With ``--target``, a layer whose grid the
named formats cannot hold exactly (targets.py) is listed before any calibration like a group size that
does not fit.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleLayerError, ModelLoadError
from . import targets as tg
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
    choose: bool = False  # --budget-bits picks its bits from the config's menu (grid.bits until then)

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
    # tables whose precision is fixed but which count in --budget-bits: name -> (params, bits; 16 = float)
    fixed: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    # tables left in float by choice (not skips): name -> (shape, why), for --dry-run
    kept: dict[str, tuple[tuple[int, int], str]] = dataclasses.field(default_factory=dict)

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
    from ..finite import nonfinite_tensors

    bad = nonfinite_tensors(model)
    if bad:
        raise ModelLoadError(f"non-finite weights in {len(bad)} tensor(s): {', '.join(bad)}")


def make_plan(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Targets and skips for ``cfg``; raises IncompatibleLayerError listing every layer the group size
    (or ``--target``'s formats) does not fit (unless ``cfg.skip_incompatible``) before any calibration."""
    prefix, layers = decoder_layers(model)
    exclude = re.compile(cfg.exclude) if cfg.exclude else None
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    names = {id(m): n for n, m in model.named_modules()}
    emb_name, head_name = names[id(emb)], (names[id(head)] if head is not None else None)
    targets: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    fixed: dict[str, tuple[int, int]] = {}
    misfits: list[tuple[str, int, str]] = []

    def add(name: str, module: nn.Module, kind: str, layer: int | None, bits: int, method: str,
            activations: str | None = None, choose: bool = False) -> None:
        width = module.weight.shape[1]
        group = cfg.effective_group_size or width
        sym = cfg.grid_symmetric(bits)
        if exclude is not None and exclude.search(name):
            skipped[name] = f"excluded by --exclude {cfg.exclude!r}"
            return
        reason = misfit_reason(cfg, bits, group, sym, width)
        if reason is None:
            targets[name] = Target(name, module, kind, layer, Grid(bits, group, sym), method, activations, choose)
        elif choose and kind != "linear":
            skipped[name] = f"kept in float: {reason[1]}"  # an automatic choice, not a request to refuse
        else:
            misfits.append((name, width, reason[0]))
            skipped[name] = reason[1]

    emb_p, head_p = cfg.table_precision("embeddings"), cfg.table_precision("lm_head")
    if tied:  # one matrix: an explicit choice on either side decides, auto follows it
        if cfg.embeddings == "auto" and cfg.lm_head != "auto":
            emb_p = head_p
        if cfg.lm_head == "auto":
            head_p = emb_p
        if head_p != emb_p:
            raise IncompatibleLayerError(
                f"{head_name}: tied to {emb_name} (one matrix), so --lm-head and --embeddings must match "
                f"(got --embeddings {cfg.embeddings}, --lm-head {cfg.lm_head})")
    budget = cfg.budget_bits is not None
    tables = [(emb_name, emb, "embeddings", emb_p)]
    if not tied and head is not None:
        tables.append((head_name, head, "lm_head", head_p))
    kept: dict[str, tuple[tuple[int, int], str]] = {}
    for name, mod, kind, p in tables:
        if p == "keep":
            kept[name] = (tuple(mod.weight.shape), f"kept in float (--{kind.replace('_', '-')} {getattr(cfg, kind)})"
                          + (" and tied" if tied else ""))
        if p == "budget":
            add(name, mod, kind, None, cfg.bits, "rtn", choose=True)
        elif p != "keep":
            add(name, mod, kind, None, _bits(p), "rtn")
        if budget and cfg.budget_tables and not (name in targets and targets[name].choose):
            fixed[name] = (mod.weight.numel(), targets[name].grid.bits if name in targets else 16)
    for i, layer in enumerate(layers):
        for sub, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                add(f"{prefix}.{i}.{sub}", mod, "linear", i, cfg.bits, cfg.method, cfg.activations, choose=budget)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name not in targets and name not in skipped and mod is not head:
            skipped[name] = "outside the decoder layers"
    if misfits and not cfg.skip_incompatible:
        raise IncompatibleLayerError(_misfit_message(cfg, misfits))
    plan = Plan(targets, skipped, tied, emb_name, head_name, fixed, kept)
    if budget:
        check_budget(plan, cfg)
    return plan


def misfit_reason(cfg: QuantConfig, bits: int, group: int, symmetric: bool, width: int) -> tuple[str, str] | None:
    """None when a tensor of input width ``width`` can take this grid, else (the error's heading for
    such layers, the reason recorded for this one)."""
    if width % group:
        return (f"group size {group} does not divide the input width of",
                f"group size {group} does not divide its input width {width}")
    if bits == 4 and width % 2:
        return "int4 packs two columns per byte: odd input width for", f"int4 needs an even input width, not {width}"
    for fmt in tg.formats(cfg.target):
        reason = tg.why_not(fmt, bits, group, symmetric, width)
        if reason:
            return f"--target {cfg.target}: {reason}, for", f"--target {cfg.target}: {reason}"
    return None


def _misfit_message(cfg: QuantConfig, misfits: list[tuple[str, int, str]]) -> str:
    by_heading: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, width, heading in misfits:
        by_heading[heading].append((name, width))
    fit = [g for g in (128, 64, 32, 16)
           if all(misfit_reason(cfg, cfg.bits, g, cfg.grid_symmetric(cfg.bits), w) is None for _, w, _ in misfits)]
    # both spellings: the CLI's flag and the recipe's field (a recipe user has no flag to pass)
    hint = f"use --group-size {fit[0]} (recipe: quantize.group_size: {fit[0]}) or " if fit else "use "
    parts = [f"{heading} {len(items)} layer(s): {compact_names(items)}" for heading, items in by_heading.items()]
    return ("; ".join(parts) + f"; {hint}--skip-incompatible (recipe: quantize.skip_incompatible: true) to leave "
            "them in float")


def tensor_cost(cfg: QuantConfig, t: Target, bits: int) -> float:
    """Bits per weight of ``t`` at ``bits`` (16 = float) as --budget-bits counts it (targets.cost_bits)."""
    return tg.cost_bits(cfg.target, bits, t.grid.group_size, cfg.grid_symmetric(bits), t.shape[1])


def fixed_cost(cfg: QuantConfig, plan: Plan) -> tuple[float, int]:
    """(total bits, params) of the tables whose precision is fixed but which count in the budget."""
    bits_total, params = 0.0, 0
    for name, (n, bits) in plan.fixed.items():
        t = plan.targets.get(name)
        bits_total += n * (16.0 if t is None or bits == 16 else tensor_cost(cfg, t, bits))
        params += n
    return bits_total, params


def check_budget(plan: Plan, cfg: QuantConfig) -> None:
    """--budget-bits below the cheapest menu entry everywhere is impossible: say so before any analysis."""
    chosen = [t for t in plan.targets.values() if t.choose]
    low = min(cfg.menu)
    fixed_bits, fixed_params = fixed_cost(cfg, plan)
    params = sum(t.module.weight.numel() for t in chosen) + fixed_params
    floor = (sum(t.module.weight.numel() * tensor_cost(cfg, t, low) for t in chosen) + fixed_bits) / max(params, 1)
    if floor > cfg.budget_bits:
        what = f"int{low} on every layer"
        if fixed_params:
            what += " with " + ", ".join(f"{n} at {'float' if b == 16 else f'int{b}'}" for n, (_, b) in
                                         plan.fixed.items())
        raise ConfigError(f"quantize.budget_bits: {cfg.budget_bits} is below the {floor:.3f} bits/weight that "
                          f"{what} already costs (scales included"
                          f"{', as ' + cfg.target + ' stores them' if cfg.target else ''})")


def _bits(precision: str) -> int:
    return {"int8": 8, "int5": 5, "int4": 4}[precision]


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
