"""What differs between the decoder families the ONNX export builds: one table row per architecture.

    spec = spec_for(model.config)            # ArchSpec for "llama" or "gemma3_text"
    dims = model_dims(model, spec)           # shapes read from the real tensors (pruned models too)
    dims.layers[0].heads, dims.layers[0].window

Everything the graph builder needs to know about a family is a field here; everything about a
particular model (head counts, widths, which layers slide) comes from its tensors and config, so a
student with fewer layers, fewer heads or a narrower MLP needs no special case.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from compress.errors import IncompatibleLayerError


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
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


def _no_window(config, i: int) -> int:
    return -1


def _gemma_window(config, i: int) -> int:
    return int(config.sliding_window) if config.layer_types[i] == "sliding_attention" else -1


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        name="llama", norm_offset=0.0, embed_scale=False, qk_norm=False,
        norms={"input": "input_layernorm", "post_attn": None, "pre_mlp": "post_attention_layernorm",
               "post_mlp": None},
        activation_key="hidden_act", activations={"silu": "silu"},
        attn_scale=lambda c, d: d ** -0.5, window=_no_window, rope_key=lambda c, i: "default"),
    "gemma3_text": ArchSpec(
        name="gemma3_text", norm_offset=1.0, embed_scale=True, qk_norm=True,
        norms={"input": "input_layernorm", "post_attn": "post_attention_layernorm",
               "pre_mlp": "pre_feedforward_layernorm", "post_mlp": "post_feedforward_layernorm"},
        activation_key="hidden_activation", activations={"gelu_pytorch_tanh": "gelu_tanh"},
        attn_scale=lambda c, d: float(c.query_pre_attn_scalar) ** -0.5, window=_gemma_window,
        rope_key=lambda c, i: c.layer_types[i]),
}
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


def spec_for(config) -> ArchSpec:
    """The table row for ``config.model_type``; IncompatibleLayerError lists the supported ones."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHS:
        raise IncompatibleLayerError(f"model_type {kind!r}: the ONNX export does not support this architecture; "
                                     f"supported: {', '.join(SUPPORTED)}")
    return ARCHS[kind]


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
        attn = layer.self_attn
        q_rows, k_rows = attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0]
        if q_rows % head_dim or k_rows % head_dim or attn.v_proj.weight.shape[0] != k_rows:
            raise IncompatibleLayerError(
                f"model.layers.{i}.self_attn: q/k/v rows ({q_rows}, {k_rows}, {attn.v_proj.weight.shape[0]}) are "
                f"not whole heads of head_dim {head_dim}")
        heads, kv = q_rows // head_dim, k_rows // head_dim
        if heads % kv:
            raise IncompatibleLayerError(f"model.layers.{i}.self_attn: {heads} query heads do not share {kv} KV heads "
                                         "evenly")
        layers.append(LayerDims(heads, kv, int(layer.mlp.gate_proj.weight.shape[0]), spec.window(cfg, i),
                                spec.rope_key(cfg, i)))
    if head_dim % 16:
        # onnxruntime's CPU GroupQueryAttention kernel works on 16-wide vectors
        raise IncompatibleLayerError(f"config.head_dim: {head_dim} is not a multiple of 16, which onnxruntime's "
                                     "GroupQueryAttention needs (real models use 64, 128 or 256)")
    return ModelDims(hidden=hidden, head_dim=head_dim, vocab=int(emb.shape[0]), eps=float(cfg.rms_norm_eps),
                     tied=head is not None and head.weight is emb, activation=spec.activations[act],
                     max_positions=int(cfg.max_position_embeddings),
                     final_softcap=getattr(cfg, "final_logit_softcapping", None), layers=tuple(layers))


def rope_tables(model, dims: ModelDims, length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cos/sin tables [length, head_dim/2] per rotary kind, computed by the model's own rotary module,
    so any rope scaling it applies (and its attention_scaling factor) is in the tables."""
    import torch

    rotary = model.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    pos = torch.arange(length, dtype=torch.long)[None]
    out = {}
    with torch.no_grad():
        for key in sorted({layer.rope for layer in dims.layers}):
            cos, sin = rotary(x, pos) if key == "default" else rotary(x, pos, key)
            half = dims.head_dim // 2
            c, s = cos[0].float().numpy(), sin[0].float().numpy()
            # HF rotates halves (rotate_half): the second half of each table repeats the first
            if not (np.array_equal(c[:, :half], c[:, half:]) and np.array_equal(s[:, :half], s[:, half:])):
                raise IncompatibleLayerError(f"rotary embedding {key!r}: not the rotate-half layout GroupQueryAttention "
                                             "implements")
            out[key] = (np.ascontiguousarray(c[:, :half]), np.ascontiguousarray(s[:, :half]))
    return out
