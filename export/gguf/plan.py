"""What goes into the GGUF: one :class:`TensorPlan` per tensor, decided before any data is read.

The plan names every tensor's GGUF name, type and how its data is made, so that the writer can
emit the header first and then stream the tensors one at a time (Gemma3-270M's 262k-row embedding
never has to sit in memory next to everything else), and so that ``--dry-run`` and the manifest can
say per tensor how it was carried. ``how``:

- ``exact``: a quantized layer's integers in a block type that holds them (:mod:`.blocks`): the file
  dequantizes to the artifact's weights, up to the float16 rounding of a Q4_1/Q5_1 offset;
- ``dequantized``: a quantized layer written as floats (exactly in F32; F16/BF16 round the products);
- ``float``: a float tensor in a float type; ``quantized``: a float tensor rounded to a block type;
- ``requantized``: calibrated integers dequantized and rounded again to a type that cannot hold them
  (only with ``requantize``; k-quants: llama.cpp's quantizer does it);
- ``fallback``: rows that are not whole 32-wide blocks, written F16 (as llama.cpp's quantizer falls back).

Type choice, per tensor:

- 1-D tensors (norms, biases) are F32, as in every llama.cpp file.
- qtype ``auto``, a quantized layer: the smallest block type that holds it (:func:`blocks.carriers`); none
  holds asymmetric int8 or groups that are not multiples of 32: refused unless ``requantize``.
  A float tensor: ``float_type`` (``embeddings`` if set, for token_embd/output).
- one qtype for the file: a quantized layer goes into it if it holds the layer; a layer with more bits than
  the type keeps its own exact type (an int8 layer of a mixed artifact stays Q8_0 in a Q4_0 file, as
  llama.cpp's mixes keep sensitive tensors wider); anything else would re-round calibrated integers and is
  refused unless ``requantize``. Float tensors: the type (``embeddings`` for token_embd/output: Q8_0 for
  the 4/5-bit types by default, since they are where 4-bit quality breaks first).
- k-quant targets: everything F32 here; llama.cpp's quantizer takes it from there (so a quantized layer is
  re-rounded: refused unless ``requantize``).

    >>> plan = build_plan(src, spec, dims, cfg)
    >>> [(t.gguf_name, t.qtype.name, t.how) for t in plan][:2]
    [('token_embd.weight', 'F16', 'float'), ('blk.0.attn_norm.weight', 'F32', 'float')]
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from compress.errors import ArtifactError, IncompatibleLayerError
from compress.quantize.targets import gguf_type

from . import blocks
from .arch import ArchSpec, Dims, rope_rows
from .config import TYPE_BITS, GGUFConfig, ggml_type, is_kquant
from .hparams import gemma3_query_scale, generated_tensor, longrope_factors, rope_freqs
from .source import ExportSource, QuantizedWeight

EMBEDDING_NAMES = ("token_embd.weight", "output.weight")
# re-rounding target with --requantize and qtype auto, for a layer no block type holds (g16, asymmetric int8)
_REROUND = {(4, True): Q.Q4_0, (4, False): Q.Q4_1, (5, True): Q.Q5_0, (5, False): Q.Q5_1, (8, True): Q.Q8_0,
            (8, False): Q.Q8_0}


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # logical (rows, cols), as in the Hugging Face model
    qtype: Q
    how: str  # exact | dequantized | float | quantized | requantized | fallback
    transform: str | None = None
    rope_heads: int = 0  # heads whose rows are reordered for llama.cpp's rope (0: none)
    scale: float = 1.0  # folded into the tensor (gemma3 q_norm, see hparams.gemma3_query_scale)
    source: str = "float"  # the artifact's scheme for this tensor ("int4 sym g64"), or "float"

    @property
    def nbytes(self) -> int:
        return blocks.stored_layout(self.shape, self.qtype)[2]

    def produce(self, src: ExportSource) -> np.ndarray:
        """The tensor's bytes in its GGUF type (read, transformed, encoded: one tensor in memory)."""
        if self.how == "generated":  # computed from the config (llama3's rope_freqs, longrope's factors)
            return blocks.encode(generated_tensor(self.gguf_name, src.config, self.shape), self.qtype)
        w = src.weight(self.hf_name)
        rows = rope_rows(self.shape[0], self.rope_heads) if self.rope_heads else None
        if isinstance(w, QuantizedWeight):
            if self.how == "exact":
                return blocks.pack(w if rows is None else w.take_rows(rows), self.qtype)
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
    tied = bool(src.config.get("tie_word_embeddings", spec.family.tied_default))
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
    qtype = resolved_qtype(src, cfg)
    plan, refused = [], []
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
        t, how = choose_type(gguf_name, shape, qw, cfg, qtype)
        if how == "requantized" and not cfg.requantize:
            refused.append((qw, _asked(gguf_name, cfg, qtype, qw)))
        heads = {"rope_q": dims.n_head, "rope_k": dims.n_head_kv}.get(rule.transform or "", 0)
        scale = q_scale if gguf_name.endswith("attn_q_norm.weight") else 1.0
        source = f"{qw.scheme} ({layers[lin].get('method', '?')})" if qw is not None else "float"
        plan.append(TensorPlan(gguf_name, name, shape, t, how, rule.transform, heads, scale, source))
    if refused:
        raise IncompatibleLayerError(refusal(refused))
    plan.sort(key=lambda t: (_group(t.gguf_name), _bid(t.gguf_name), order[_pattern(t.hf_name)]))
    freqs = rope_freqs(src.config, dims.head_dim)
    if freqs is not None:  # llama3 rope scaling: llama.cpp divides each rope frequency by this tensor
        plan.append(TensorPlan("rope_freqs.weight", "", tuple(freqs.shape), Q.F32, "generated"))
    for name, factors in longrope_factors(src.config).items():  # Phi-3 longrope: llama.cpp picks one set by n_ctx
        plan.append(TensorPlan(name, "", tuple(factors.shape), Q.F32, "generated"))
    return plan


def resolved_qtype(src: ExportSource, cfg: GGUFConfig) -> str:
    """``cfg.qtype``, with ``auto`` for an artifact without integers meaning F16 (the float default)."""
    if cfg.qtype == "auto" and not src.quantized_layers():
        return "F16"
    return cfg.qtype


def choose_type(gguf_name: str, shape: tuple[int, ...], qw: QuantizedWeight | None, cfg: GGUFConfig,
                qtype: str | None = None) -> tuple[Q, str]:
    """(GGUF type, how) of one tensor; ``qtype`` is :func:`resolved_qtype` (default ``cfg.qtype``)."""
    qtype = qtype or cfg.qtype
    if len(shape) == 1:
        return Q.F32, "float"
    asked = _asked(gguf_name, cfg, qtype, qw)
    if qw is None:
        if is_kquant(asked):
            return Q.F32, "float"  # llama.cpp quantizes it
        target = ggml_type(cfg.float_type if asked == "auto" else asked)
        if target in blocks.FLOAT:
            return target, "float"
        return (target, "quantized") if blocks.fits(shape, target) else (Q.F16, "fallback")
    exact = blocks.carriers(qw)
    if asked == "auto":
        # the type compress quantize --target gguf promised for this grid (its one table; the smallest
        # of blocks.carriers, which tests/test_export_gguf_exact.py checks for every grid)
        promised = gguf_type(qw.bits, qw.group_size, qw.symmetric, qw.shape[1])
        if promised is not None and ggml_type(promised) in exact:
            return ggml_type(promised), "exact"
        target = _REROUND[(qw.bits, qw.symmetric)]
    elif is_kquant(asked):
        return Q.F32, "requantized"  # written F32, re-rounded by llama.cpp's quantizer
    else:
        target = ggml_type(asked)
        if target in blocks.FLOAT:  # F32: exact (a small integer times a float16 scale); F16/BF16 round it
            return target, "dequantized"
        if target in exact:
            return target, "exact"
        if exact and qw.bits > TYPE_BITS[asked]:
            return exact[0], "exact"
    return (target, "requantized") if blocks.fits(shape, target) else (Q.F16, "fallback")


def _asked(gguf_name: str, cfg: GGUFConfig, qtype: str, qw: QuantizedWeight | None) -> str:
    """The type asked for this tensor: the embeddings' own for token_embd/output, else the file's. The
    default for a float table in a 4/5-bit file (Q8_0) is not forced on a table the artifact quantized:
    its integers go into the file's type like any layer's, unless ``embeddings`` names a type."""
    if gguf_name not in EMBEDDING_NAMES:
        return qtype
    if qw is not None:
        return qtype if cfg.embeddings == "auto" else cfg.embeddings
    return cfg.embedding_type() or qtype


def refusal(refused: list[tuple[QuantizedWeight, str]]) -> str:
    """One line: which calibrated layers would be re-rounded, why, and what would carry them."""
    groups: dict[tuple[str, str], list[QuantizedWeight]] = {}
    for qw, asked in refused:
        groups.setdefault((qw.scheme, asked), []).append(qw)
    parts = []
    for (scheme, asked), qws in groups.items():
        qw = qws[0]
        exact = [t.name for t in blocks.carriers(qw)]
        if asked == "auto":
            why = f"no GGUF block type holds it ({blocks.why_not(qw, Q.Q8_0)})"
        elif is_kquant(asked):
            why = f"{asked} is re-fitted by llama.cpp's quantizer (256-wide super-blocks with their own scales)"
        else:
            why = blocks.why_not(qw, ggml_type(asked))
        held = f"held exactly by {', '.join(exact + ['F32'])}" if exact else "held exactly only by F32 (floats)"
        parts.append(f"{len(qws)} layer(s) {scheme} (e.g. {qw.name}) in {asked}: {why}; {held}")
    what = "--qtype F32" if {a for _, a in refused} == {"auto"} else "--qtype auto"
    return (f"export-gguf: the export would re-round calibrated integers: {'; '.join(parts)}. Use {what} "
            f"(each tensor in a type that holds it) or pass --requantize (requantize: true) to re-round them")


def summarize(plan: list[TensorPlan]) -> dict[str, Any]:
    """Counts and bytes per type and per decision, and the names of the tensors not carried exactly."""
    by_type = Counter(t.qtype.name for t in plan)
    by_how = Counter(t.how for t in plan)
    out: dict[str, Any] = {
        "tensors": len(plan),
        "bytes": sum(t.nbytes for t in plan),
        "types": dict(sorted(by_type.items())),
        "decisions": dict(sorted(by_how.items())),
    }
    for how in ("requantized", "fallback", "quantized", "dequantized"):
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
