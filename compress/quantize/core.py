"""``quantize_``: the stage's one verb. Rounds a model's weights in place onto integer grids and
returns the integers (for the artifact and every export) with a report.

    cfg = QuantConfig(scheme="int4-gptq", group_size=64)
    ids = calibration_ids(tok, load_text(cfg.calib), samples=cfg.samples, seq_len=cfg.seq_len)
    result = quantize_(model, cfg, ids)      # model now runs exactly the dequantized integers
    result.report["bits_per_weight_after"]

Order of work: every check (finite weights, an earlier quantization, group sizes, calibration data)
happens before any calibration. Embeddings are rounded first, so calibration sees the inputs the
quantized model will see; lm_head last.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from ..memory import trim_heap
from .awq import awq_layer
from .calibrate import stream_layers
from . import targets as tg
from .config import QuantConfig
from .format import FORMAT_VERSION
from .gptq import gptq
from .grid import Grid, QTensor, rtn
from .layers import Plan, Target, check_finite, check_not_quantized, make_plan
from .modules import apply_qtensor
from .sensitivity import allocate, analyze, budget_summary

log = logging.getLogger(__name__)


@dataclasses.dataclass
class QuantResult:
    config: QuantConfig
    tensors: dict[str, QTensor]  # module name -> integers, in the order they were quantized
    plan: Plan
    report: dict[str, Any]

    def layer_entries(self) -> dict[str, dict[str, Any]]:
        """quantization.json's ``layers``: one entry per stored integer tensor (see FORMAT.md)."""
        out = {}
        for name, qt in self.tensors.items():
            t = self.plan.targets[name]
            out[name] = {"bits": qt.grid.bits, "group_size": qt.grid.group_size, "symmetric": qt.grid.symmetric,
                         "method": t.method, "shape": list(qt.shape),
                         "act_order": bool(self.config.act_order and t.method == "gptq"),
                         "activations": t.activations}
        return out

    def table_choice(self, which: str) -> str:
        """What became of the embedding table / lm_head: ``keep`` or ``int4|int5|int8``."""
        name = self.plan.embeddings_name if which == "embeddings" or self.plan.tied else self.plan.lm_head_name
        qt = self.tensors.get(name) if name else None
        return f"int{qt.grid.bits}" if qt is not None else "keep"

    def quantization_json(self) -> dict[str, Any]:
        out = {"format_version": FORMAT_VERSION, "scheme": self.config.scheme, "layers": self.layer_entries(),
               "skipped": dict(self.plan.skipped), "embeddings": self.table_choice("embeddings"),
               "lm_head": self.table_choice("lm_head"), "tied": self.plan.tied}
        if self.config.target:
            out["target"] = self.config.target
        return out


def quantize_(model: nn.Module, cfg: QuantConfig, calib: torch.Tensor | None = None) -> QuantResult:
    """Quantize ``model`` in place according to ``cfg``; ``calib`` is [samples, seq_len] token ids
    (see :func:`compress.quantize.calibration_ids`), needed by GPTQ, AWQ, --analyze and --budget-bits."""
    t0 = time.perf_counter()
    check_not_quantized(model)
    check_finite(model)
    plan = make_plan(model, cfg)
    if cfg.needs_calibration and calib is None:
        raise DataError(f"{cfg.scheme}: calibration token ids are needed (samples x seq_len), none given")
    bytes_before, n_params = _param_bytes(model)
    report: dict[str, Any] = {"scheme": cfg.scheme, "group_size": cfg.effective_group_size or "per-channel",
                              "symmetric": cfg.symmetric, "target": cfg.target}
    if calib is not None and cfg.needs_calibration:
        report["calibration"] = {"data": cfg.calib, "samples": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
                                 "tokens": int(calib.numel())}
    if cfg.analyze or cfg.budget_bits is not None:
        cols = min(cfg.analyze_tokens, calib.shape[1])
        table = analyze(model, plan, calib[:math.ceil(cfg.analyze_tokens / cols), :cols], cfg)
        report["analysis"] = table
        if cfg.budget_bits is not None:
            choice = allocate(plan, table, cfg)
            summary = budget_summary(plan, table, choice, cfg)
            _apply_choice(plan, choice, cfg)
            report["budget"] = {"target_bits": cfg.budget_bits, **summary, "choice": choice}
    tensors: dict[str, QTensor] = {}
    head = _gptq_head(plan, cfg)
    with torch.no_grad():
        for t in [t for t in plan.targets.values() if t.kind == "embeddings" and t is not head]:
            tensors[t.name] = _rtn_apply(model, t)
        linears = {n: t for n, t in plan.targets.items() if t.kind == "linear"}
        if cfg.method == "rtn":
            for t in linears.values():
                tensors[t.name] = _rtn_apply(model, t)
        else:
            extra = _calibrated(model, plan, cfg, calib, tensors, head)
            report[cfg.method] = extra
        for t in [t for t in plan.targets.values() if t.kind == "lm_head" and t is not head]:
            tensors[t.name] = _rtn_apply(model, t)
    result = QuantResult(cfg, tensors, plan, report)
    model.compress_quantization = result.quantization_json()
    q_bytes = sum(qt.nbytes() for qt in tensors.values())
    q_params = sum(qt.q.numel() for qt in tensors.values())
    rest_params = n_params - q_params  # stored as float32 in the artifact (FORMAT.md)
    rest = 4 * rest_params
    report.update({
        "quantized": len(tensors), "skipped": dict(plan.skipped),
        "precision": {f"int{b}": sum(1 for q in tensors.values() if q.grid.bits == b) for b in (4, 5, 8)},
        "embeddings": result.table_choice("embeddings"),
        "lm_head": "tied to embeddings" if plan.tied else result.table_choice("lm_head"),
        "tied": plan.tied, "params": n_params,
        "bytes_before": bytes_before, "bytes_after": q_bytes + rest,
        "bits_per_weight_before": 8 * bytes_before / n_params,
        "bits_per_weight_after": 8 * (q_bytes + rest) / n_params,
        "quantized_bits_per_weight": 8 * q_bytes / max(q_params, 1),
        # what an export keeping the float tensors in fp16 would weigh: the size to compare with GGUF
        "bytes_after_fp16_rest": q_bytes + 2 * rest_params,
        "formats": carried_formats(model, plan, tensors),
        "seconds": round(time.perf_counter() - t0, 2),
    })
    log.info("quantized %d tensors, skipped %d: %.1f MB -> %.1f MB", len(tensors), len(plan.skipped),
             bytes_before / 1e6, (q_bytes + rest) / 1e6)
    return result


def _apply_choice(plan: Plan, choice: dict[str, int], cfg: QuantConfig) -> None:
    for name, bits in choice.items():
        t = plan.targets[name]
        if bits == 16:
            del plan.targets[name]
            plan.skipped[name] = "kept in float by --budget-bits"
        elif bits != t.grid.bits:
            t.grid = Grid(bits, t.grid.group_size, cfg.grid_symmetric(bits))


def carried_formats(model: nn.Module, plan: Plan, tensors: dict[str, QTensor]) -> dict[str, Any]:
    """How the GGUF and ONNX exports will hold each matrix (targets.py), counted per type, with the
    weight bytes that implies (2-D tensors; float ones at 16 bits)."""
    out: dict[str, Any] = {}
    mats = {n: m.weight.shape for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2}
    if plan.tied and plan.lm_head_name in mats:
        del mats[plan.lm_head_name]
    for fmt in ("gguf", "onnx"):
        counts: dict[str, int] = {}
        bits = 0.0
        for name, shape in mats.items():
            qt = tensors.get(name)
            b, g, sym = (qt.grid.bits, qt.grid.group_size, qt.grid.symmetric) if qt is not None else (16, 0, True)
            kind = tg.describe(fmt, b, g, sym, shape[1])
            counts[kind] = counts.get(kind, 0) + 1
            n = shape[0] * shape[1]
            exact = kind != "re-rounded"
            bits += n * (tg.bits_per_weight(fmt, b, g, sym, shape[1]) if exact else 16.0)
        out[fmt] = {"tensors": counts, "matrix_bytes": int(bits / 8)}
    return out


def _rtn_apply(model: nn.Module, t: Target) -> QTensor:
    qt = rtn(t.module.weight.detach(), t.grid, name=t.name)
    apply_qtensor(model, t.name, qt, activations=t.activations)
    # the rounding's fp32 temporaries are freed, but glibc may keep their pages: seen +310 MB over
    # SmolLM2's 210 tensors in some runs (timing-dependent); a trim costs ~0.3 ms
    trim_heap()
    return qt


def _gptq_head(plan: Plan, cfg: QuantConfig) -> Target | None:
    """The output projection (the tied table, or an untied lm_head) when the scheme is GPTQ: it is a
    linear map of the final hidden states like any decoder linear, so GPTQ with their Hessian fits it
    better than round-to-nearest. On SmolLM2's demo mix the RTN int5 tied table alone carried 56% of the
    artifact's KL (0.055 with it, 0.025 with the table in float). An untied embedding table is a lookup
    with no input activations and stays RTN."""
    if cfg.method != "gptq":
        return None
    t = plan.targets.get(plan.embeddings_name if plan.tied else (plan.lm_head_name or ""))
    if t is None or t.kind == "linear":
        return None
    t.method = "gptq"
    return t


def _calibrated(model: nn.Module, plan: Plan, cfg: QuantConfig, calib: torch.Tensor,
                tensors: dict[str, QTensor], head: Target | None = None) -> dict[str, Any]:
    """GPTQ or AWQ, streamed layer by layer; returns the method's part of the report. ``head`` (GPTQ
    only) is quantized last, from the quantized decoder's final-norm outputs."""
    conf = model.config
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
    extra: dict[str, Any] = {}

    def process(i: int, layer: nn.Module, targets: dict[str, Target], stats, x, kwargs) -> None:
        if cfg.method == "gptq":
            for name, t in targets.items():
                qt, used = gptq(t.module.weight, stats[name].hessian, t.grid, damp=cfg.damp,
                                act_order=cfg.act_order, clip=cfg.clip_search, name=name)
                if used != cfg.damp:
                    extra.setdefault("damping_raised", {})[name] = used
                apply_qtensor(model, name, qt)
                tensors[name] = qt
        else:
            qts, info = awq_layer(layer, targets, stats, x[:1], kwargs, head_dim=head_dim, n_grid=cfg.awq_grid)
            extra.setdefault("ratios", {})[str(i)] = {k: v["ratio"] for k, v in info.items()}
            for name, qt in qts.items():
                apply_qtensor(model, name, qt)
                tensors[name] = qt

    def finish(x: torch.Tensor) -> None:
        norm = getattr(model, model.base_model_prefix).norm
        d = x.shape[-1]
        h, n = torch.zeros(d, d), 0
        for a in range(0, x.shape[0], cfg.batch):
            y = norm(x[a:a + cfg.batch]).reshape(-1, d).float()
            h.addmm_(y.T, y)
            n += y.shape[0]
        qt, used = gptq(head.module.weight, h / max(n, 1), head.grid, damp=cfg.damp, act_order=cfg.act_order,
                        clip=cfg.clip_search, name=head.name)
        if used != cfg.damp:
            extra.setdefault("damping_raised", {})[head.name] = used
        apply_qtensor(model, head.name, qt)
        tensors[head.name] = qt
        trim_heap()

    stream_layers(model, calib, cfg.batch, plan.by_layer(), process, description=cfg.method.upper(),
                  finish=finish if head is not None else None)
    return extra


def _param_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes and count of the model's parameters (a tied matrix once)."""
    seen, size, count = set(), 0, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            size += p.numel() * p.element_size()
            count += p.numel()
    return size, count
