"""What goes into the GGUF: one :class:`TensorPlan` per tensor, decided before any data is read.

The plan names every tensor's GGUF name, type and how its data is made, so that the writer can
emit the header first and then stream the tensors one at a time (Gemma3-270M's 262k-row embedding
never has to sit in memory next to everything else), and so that ``--dry-run`` and the manifest can
say exactly which layers kept our integers, which were quantized again, and which fell back to F16.

Type choice, per tensor:

- 1-D tensors (norms, biases) are F32, as in every llama.cpp file.
- Quantized targets (Q8_0, Q4_0, Q4_1): a layer of a quantized artifact whose integers fit a ggml block
  (int4/int8, symmetric, group 32) is written as is, in Q4_0/Q8_0 (``direct``), whichever of the three
  was asked (an int8 layer of a mixed artifact stays Q8_0 in a Q4_0 file); other layers are dequantized
  and quantized to the target (``requantized``). Float targets get the exact dequantized weights.
- ``token_embd`` / ``output`` use ``embeddings`` (auto: Q8_0 for the 4-bit targets, since they are
  where 4-bit quality breaks first and llama.cpp itself keeps the output matrix at 6 bits; the target
  otherwise).
- A row width that is not a whole number of 32-wide blocks (a pruned MLP of 100) is written F16
  (``fallback``); llama.cpp's quantizer likewise falls back to a type whose blocks fit.
- k-quant targets: everything F32 here; llama.cpp's quantizer takes it from there.

    >>> plan = build_plan(src, spec, dims, cfg)
    >>> [(t.gguf_name, t.qtype.name, t.how) for t in plan][:2]
    [('token_embd.weight', 'Q8_0', 'quantized'), ('blk.0.attn_norm.weight', 'F32', 'float')]
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from compress.errors import ArtifactError, IncompatibleLayerError

from . import blocks
from .arch import ArchSpec, Dims, rope_rows
from .config import GGUFConfig, ggml_type, is_kquant
from .hparams import gemma3_query_scale
from .source import ExportSource, QuantizedWeight

EMBEDDING_NAMES = ("token_embd.weight", "output.weight")
_QUANT_TARGETS = (Q.Q8_0, Q.Q4_0, Q.Q4_1)


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # logical (rows, cols), as in the Hugging Face model
    qtype: Q
    how: str  # float | quantized | direct | dequantized | requantized | fallback
    transform: str | None = None
    rope_heads: int = 0  # heads whose rows are reordered for llama.cpp's rope (0: none)
    scale: float = 1.0  # folded into the tensor (gemma3 q_norm, see hparams.gemma3_query_scale)

    @property
    def nbytes(self) -> int:
        return blocks.stored_layout(self.shape, self.qtype)[2]

    def produce(self, src: ExportSource) -> np.ndarray:
        """The tensor's bytes in its GGUF type (read, transformed, encoded: one tensor in memory)."""
        w = src.weight(self.hf_name)
        rows = rope_rows(self.shape[0], self.rope_heads) if self.rope_heads else None
        if isinstance(w, QuantizedWeight):
            if self.how == "direct":
                return blocks.pack_direct(w if rows is None else w.take_rows(rows), self.qtype)
            data = w.dequantize()
        else:
            data = w
        if rows is not None:
            data = data[rows]
        if self.transform == "norm_plus_one":
            data = data + np.float32(1.0)
        if self.scale != 1.0:
            data = data * np.float32(self.scale)
        return blocks.encode(data, self.qtype)


def build_plan(src: ExportSource, spec: ArchSpec, dims: Dims, cfg: GGUFConfig) -> list[TensorPlan]:
    """Map every tensor of the artifact to a GGUF tensor; refuse unknown, missing or misshapen ones."""
    tied = bool(src.config.get("tie_word_embeddings", spec.gguf_arch == "gemma3"))
    layers = src.quantized_layers()
    matched: dict[str, tuple[Any, int | None]] = {}
    for name in src.logical_names():
        hit = spec.rule_for(name)
        if hit is None:
            raise IncompatibleLayerError(f"{src.folder}: tensor {name} has no GGUF name for {spec.gguf_arch} "
                                         f"(an unsupported variant of the architecture?)")
        matched[name] = hit
    for i in range(dims.n_layer):
        for r in spec.rules:
            if r.per_layer and not r.optional and r.hf.format(bid=i) not in matched:
                raise ArtifactError(f"{src.folder}: tensor {r.hf.format(bid=i)} is missing from the weights")
    for r in spec.rules:
        if not r.per_layer and not r.optional and r.hf not in matched:
            raise ArtifactError(f"{src.folder}: tensor {r.hf} is missing from the weights")
    q_scale = gemma3_query_scale(src.config, dims) if spec.gguf_arch == "gemma3" else 1.0
    order = {r.hf: k for k, r in enumerate(spec.rules)}
    plan = []
    for name, (rule, bid) in matched.items():
        shape = tuple(int(s) for s in src.shape(name))
        want = tuple(rule.shape(dims))
        if shape != want:
            raise ArtifactError(f"{src.folder}: tensor {name} has shape {list(shape)} but the model's dimensions "
                                f"({_dims_text(dims)}) need {list(want)}")
        lin = name[: -len(".weight")] if name.endswith(".weight") else None
        quantized = lin in layers
        if rule.gguf == "output.weight" and tied and not quantized:
            continue  # llama.cpp reads the tied output matrix from token_embd
        gguf_name = rule.gguf.format(bid=bid) if bid is not None else rule.gguf
        qw = src.weight(name) if quantized else None
        qtype, how = choose_type(gguf_name, shape, qw, cfg)
        heads = {"rope_q": dims.n_head, "rope_k": dims.n_head_kv}.get(rule.transform or "", 0)
        scale = q_scale if gguf_name.endswith("attn_q_norm.weight") else 1.0
        plan.append(TensorPlan(gguf_name, name, shape, qtype, how, rule.transform, heads, scale))
    plan.sort(key=lambda t: (_group(t.gguf_name), _bid(t.gguf_name), order[_pattern(t.hf_name)]))
    return plan


def choose_type(gguf_name: str, shape: tuple[int, ...], qw: QuantizedWeight | None,
                cfg: GGUFConfig) -> tuple[Q, str]:
    if len(shape) == 1:
        return Q.F32, "float"
    if is_kquant(cfg.qtype):
        return Q.F32, ("dequantized" if qw is not None else "float")
    target = ggml_type(cfg.embedding_type() if gguf_name in EMBEDDING_NAMES else cfg.qtype)
    if qw is not None and cfg.reuse_integers and target in _QUANT_TARGETS:
        direct = blocks.direct_type(qw)
        if direct is not None:
            return direct, "direct"
    if target in _QUANT_TARGETS and not blocks.fits(shape, target):
        return Q.F16, "fallback"
    if target in _QUANT_TARGETS:
        return target, ("requantized" if qw is not None else "quantized")
    return target, ("dequantized" if qw is not None else "float")


def summarize(plan: list[TensorPlan]) -> dict[str, Any]:
    """Counts and bytes per type and per decision, and the names that were not written as asked."""
    by_type = Counter(t.qtype.name for t in plan)
    by_how = Counter(t.how for t in plan)
    out: dict[str, Any] = {
        "tensors": len(plan),
        "bytes": sum(t.nbytes for t in plan),
        "types": dict(sorted(by_type.items())),
        "decisions": dict(sorted(by_how.items())),
    }
    for how in ("direct", "requantized", "fallback"):
        names = [t.gguf_name for t in plan if t.how == how]
        if names:
            out[how] = names
    return out


def _dims_text(d: Dims) -> str:
    return (f"{d.n_layer} layers, hidden {d.hidden}, MLP {d.n_ff}, {d.n_head} heads / {d.n_head_kv} KV heads "
            f"of {d.head_dim}, vocab {d.vocab}")


def _group(gguf_name: str) -> int:
    return 0 if gguf_name == "token_embd.weight" else (1 if gguf_name.startswith("blk.") else 2)


def _bid(gguf_name: str) -> int:
    return int(gguf_name.split(".")[1]) if gguf_name.startswith("blk.") else 0


def _pattern(hf_name: str) -> str:
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[1] == "layers" and parts[2].isdigit():
        parts[2] = "{bid}"
    return ".".join(parts)
