"""The ONNX view of the family table (:mod:`compress.families`): one :class:`ArchSpec` per row.

    spec = spec_for(model.config)            # ArchSpec for "llama", "qwen3", "phi3", "gemma3_text", ...
    dims = model_dims(model, spec)           # shapes read from the real tensors (pruned models too)
    dims.layers[0].heads, dims.layers[0].window

Nothing here is per family: each field is computed from the row (norm offset, q/k norm, fused
projections, activation, sliding window, attention scale). Everything about a particular model (head
counts, widths, which layers slide) comes from its tensors and config, so a student with fewer layers,
fewer heads or a narrower MLP needs no special case.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from compress.errors import IncompatibleLayerError, ModelLoadError
from compress.families import FAMILIES, Family, check_config, longrope, rotary_dim


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
    family: Family
    norm_offset: float  # Gemma's RMSNorm multiplies by (1 + weight)
    embed_scale: bool  # Gemma multiplies embeddings by sqrt(hidden)
    qk_norm: bool  # per-head RMSNorm on q and k before rotary
    # norm role -> HF module suffix inside a layer; None where the family has no such norm
    norms: dict[str, str | None]
    activation_key: str  # config field naming the MLP activation
    activations: dict[str, str]  # HF activation name -> our op ("silu" | "gelu_tanh")
    attn_scale: Callable[[Any, int], float]
    window: Callable[[Any, int], int]  # sliding window of layer i, -1 for full attention
    rope_key: Callable[[Any, int], str]  # which rotary table layer i uses
    qkv: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # one fused: Phi-3
    gate_up: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")

    @property
    def linears(self) -> tuple[str, ...]:
        return (*self.qkv, "self_attn.o_proj", *self.gate_up, "mlp.down_proj")


def _window(fam: Family) -> Callable[[Any, int], int]:
    if fam.window == "layer_types":
        return lambda c, i: int(c.sliding_window) if c.layer_types[i] == "sliding_attention" else -1
    if fam.window == "all":
        return lambda c, i: int(c.sliding_window) if getattr(c, "sliding_window", None) else -1
    return lambda c, i: -1


def _attn_scale(fam: Family) -> Callable[[Any, int], float]:
    if fam.attn_scale_key:
        return lambda c, d, key=fam.attn_scale_key: float(getattr(c, key)) ** -0.5
    return lambda c, d: d ** -0.5


def spec_of(fam: Family) -> ArchSpec:
    per_type = fam.window == "layer_types"
    return ArchSpec(
        name=fam.model_types[0], family=fam, norm_offset=fam.norm_offset, embed_scale=fam.embed_scale,
        qk_norm=fam.qk_norm, norms=fam.norms, activation_key=fam.activation_key, activations=dict(fam.activations),
        attn_scale=_attn_scale(fam), window=_window(fam),
        rope_key=(lambda c, i: c.layer_types[i]) if per_type else (lambda c, i: "default"),
        qkv=fam.qkv, gate_up=fam.gate_up)


ARCHS: dict[str, ArchSpec] = {f.model_types[0]: spec_of(f) for f in FAMILIES}
SUPPORTED = tuple(ARCHS)


@dataclasses.dataclass(frozen=True)
class LayerDims:
    heads: int
    kv_heads: int
    intermediate: int
    window: int  # -1: full attention
    rope: str


@dataclasses.dataclass(frozen=True)
class ModelDims:
    hidden: int
    head_dim: int
    vocab: int
    eps: float
    tied: bool
    activation: str
    max_positions: int
    final_softcap: float | None
    layers: tuple[LayerDims, ...]
    rotary_dim: int = 0  # dims of each head that rotate (0: all of them; Phi-4-mini's partial rotary: fewer)
    linears: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # module suffixes per layer


def spec_for(config) -> ArchSpec:
    """The table row for ``config.model_type``; IncompatibleLayerError lists the supported ones."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHS:
        raise IncompatibleLayerError(f"model_type {kind!r}: the ONNX export does not support this architecture; "
                                     f"supported: {', '.join(SUPPORTED)}")
    spec = ARCHS[kind]
    cfg = _config_dict(config)
    check_config(spec.family, cfg, "config.json")
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))
    _check_rotary(rotary_dim(cfg, head_dim), head_dim)  # from config.json: the dry run refuses it too
    return spec


def dry_run_note(cfg, folder, config: dict[str, Any]) -> str:
    """A recipe's ``--dry-run`` of an export-onnx step (the kinds table's ``dry_run``): the family, rope and
    rotary dims :func:`spec_for` checks, read by transformers from config.json (no model is built).

        dry_run_note(OnnxConfig(precision="int4"), folder, config)   # "int4, architecture llama"
    """
    from transformers import AutoConfig

    try:  # transformers' own reading: it fills the defaults and renames that spec_for expects
        hf_config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder}/config.json: cannot be read ({str(e).splitlines()[0]})") from None
    spec_for(hf_config)
    return f"{cfg.precision}, architecture {config.get('model_type')}"


def _check_rotary(rotary: int, head_dim: int) -> None:
    if rotary != head_dim and rotary % 16:
        # GroupQueryAttention: "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8"
        raise IncompatibleLayerError(f"config.partial_rotary_factor: {rotary} rotary dims of head_dim {head_dim} is "
                                     "not a multiple of 16, which onnxruntime's GroupQueryAttention needs "
                                     "(Phi-4-mini: 96 of 128)")


def model_dims(model, spec: ArchSpec) -> ModelDims:
    """Shapes from the model's tensors (not just its config), checked against each other."""
    cfg = model.config
    act = getattr(cfg, spec.activation_key, None)
    if act not in spec.activations:
        raise IncompatibleLayerError(f"config.{spec.activation_key}: {act!r} is not supported for {spec.name} "
                                     f"(supported: {', '.join(spec.activations)})")
    if getattr(cfg, "attn_logit_softcapping", None):
        raise IncompatibleLayerError(f"config.attn_logit_softcapping: {cfg.attn_logit_softcapping} is not supported "
                                     "by the ONNX export")
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    hidden = int(emb.shape[1])
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads)
    layers = []
    for i, layer in enumerate(model.model.layers):
        rows = [int(layer.get_submodule(m).weight.shape[0]) for m in spec.qkv]
        if len(rows) == 1:  # fused q/k/v (Phi-3): the query heads from the config, k and v equal parts
            q = int(cfg.num_attention_heads) * head_dim
            rows = [q, (rows[0] - q) // 2, (rows[0] - q) // 2]
        q_rows, k_rows, v_rows = rows
        if q_rows % head_dim or k_rows % head_dim or v_rows != k_rows or k_rows <= 0:
            raise IncompatibleLayerError(
                f"model.layers.{i}.self_attn: q/k/v rows ({q_rows}, {k_rows}, {v_rows}) are "
                f"not whole heads of head_dim {head_dim}")
        heads, kv = q_rows // head_dim, k_rows // head_dim
        if heads % kv:
            raise IncompatibleLayerError(f"model.layers.{i}.self_attn: {heads} query heads do not share {kv} KV heads "
                                         "evenly")
        ff = int(layer.get_submodule(spec.gate_up[0]).weight.shape[0]) // (2 if len(spec.gate_up) == 1 else 1)
        layers.append(LayerDims(heads, kv, ff, spec.window(cfg, i), spec.rope_key(cfg, i)))
    if head_dim % 16:
        # onnxruntime's CPU GroupQueryAttention kernel works on 16-wide vectors
        raise IncompatibleLayerError(f"config.head_dim: {head_dim} is not a multiple of 16, which onnxruntime's "
                                     "GroupQueryAttention needs (real models use 64, 128 or 256)")
    rotary = rotary_dim(_config_dict(cfg), head_dim)
    _check_rotary(rotary, head_dim)
    return ModelDims(hidden=hidden, head_dim=head_dim, vocab=int(emb.shape[0]), eps=float(cfg.rms_norm_eps),
                     tied=head is not None and head.weight is emb, activation=spec.activations[act],
                     max_positions=int(cfg.max_position_embeddings),
                     final_softcap=getattr(cfg, "final_logit_softcapping", None), layers=tuple(layers),
                     linears=spec.linears, rotary_dim=rotary)


def _config_dict(cfg) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


@dataclasses.dataclass(frozen=True)
class RopeTables:
    """cos/sin [rows, rotary_dim/2] for one rotary kind. With longrope, ``cos``/``sin`` hold the short
    factors' table for sequences of up to ``original`` positions and ``long`` the long factors' table the
    graph switches to when the total sequence is longer (as transformers switches per forward pass)."""

    cos: np.ndarray
    sin: np.ndarray
    long: tuple[np.ndarray, np.ndarray] | None = None
    original: int = 0


def rope_tables(model, dims: ModelDims, length: int) -> dict[str, RopeTables]:
    """cos/sin tables [length, rotary_dim/2] per rotary kind, computed by the model's own rotary module,
    so any rope scaling it applies (and its attention_scaling factor) is in the tables. Longrope: the module
    picks its factors by the largest position it is given, so the short table is asked for with the
    original context's positions and the long one with all ``length``."""
    import torch

    rotary = model.model.rotary_emb
    lr = longrope(_config_dict(model.config))
    x = torch.zeros(1, dtype=torch.float32)
    out = {}
    with torch.no_grad():
        for key in sorted({layer.rope for layer in dims.layers}):
            def table(n: int) -> tuple[np.ndarray, np.ndarray]:
                pos = torch.arange(n, dtype=torch.long)[None]
                cos, sin = rotary(x, pos) if key == "default" else rotary(x, pos, key)
                return _half_table(key, cos[0].float().numpy(), sin[0].float().numpy(), dims)

            if lr is None or length <= lr.original_context:
                out[key] = RopeTables(*table(length))
            else:
                out[key] = RopeTables(*table(lr.original_context), long=table(length), original=lr.original_context)
    return out


def _half_table(key: str, c: np.ndarray, s: np.ndarray, dims: ModelDims) -> tuple[np.ndarray, np.ndarray]:
    """The first half of HF's [positions, rotary_dim] tables: what GroupQueryAttention reads (it infers the
    rotary dims from the table's width and passes the rest of each head through, as HF's partial rotary)."""
    width = dims.rotary_dim or dims.head_dim
    if c.shape[1] != width:
        raise IncompatibleLayerError(f"rotary embedding {key!r}: tables of {c.shape[1]} dims, but the config "
                                     f"says {width} of head_dim {dims.head_dim} rotate")
    half = width // 2
    # HF rotates halves (rotate_half): the second half of each table repeats the first
    if not (np.array_equal(c[:, :half], c[:, half:]) and np.array_equal(s[:, :half], s[:, half:])):
        raise IncompatibleLayerError(f"rotary embedding {key!r}: not the rotate-half layout GroupQueryAttention "
                                     "implements")
    return np.ascontiguousarray(c[:, :half]), np.ascontiguousarray(s[:, :half])
