"""Per-architecture tables: Hugging Face tensor names -> GGUF names, shapes, and llama.cpp's conventions.

One :class:`ArchSpec` per supported family. Adding an architecture means adding a table here (and
its hyperparameters in :mod:`.hparams`), not touching the writer. The names follow gguf-py's own
tensor map (a test checks that they agree), the conventions follow llama.cpp's converter
(convert_hf_to_gguf.py):

- llama: q/k rows are reordered per head (``rope_q`` / ``rope_k``) because llama.cpp's llama graph
  rotates adjacent pairs (GPT-J style) while Hugging Face rotates the two halves of each head.
- gemma3: every RMSNorm weight is stored as ``1 + w`` (``norm_plus_one``): Hugging Face's Gemma
  norm computes ``x * (1 + w)``, llama.cpp's computes ``x * w``.
- tied embeddings: no ``output.weight``; llama.cpp reuses ``token_embd.weight``.

    >>> spec = spec_for({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    >>> spec.gguf_arch
    'llama'
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from compress.errors import IncompatibleLayerError


@dataclasses.dataclass(frozen=True)
class Dims:
    """The shapes a model really has (read from its tensors, checked against config.json)."""

    n_layer: int
    hidden: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int


Shape = Callable[[Dims], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class TensorRule:
    hf: str  # Hugging Face name; "{bid}" stands for the layer index
    gguf: str  # GGUF name, same placeholder
    shape: Shape  # expected Hugging Face shape (out, in) for the given dims
    transform: str | None = None  # "rope_q" | "rope_k" | "norm_plus_one"
    optional: bool = False  # biases, untied lm_head

    @property
    def per_layer(self) -> bool:
        return "{bid}" in self.hf


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str
    hf_architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    rules: tuple[TensorRule, ...]

    def rule_for(self, hf_name: str) -> tuple[TensorRule, int | None] | None:
        """The rule matching a concrete tensor name and its layer index (None when no rule matches)."""
        parts = hf_name.split(".")
        bid = None
        if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
            bid = int(parts[2])
            pattern = ".".join(parts[:2] + ["{bid}"] + parts[3:])
        else:
            pattern = hf_name
        for r in self.rules:
            if r.hf == pattern:
                return r, bid
        return None


def _q(d: Dims) -> tuple[int, int]:
    return d.n_head * d.head_dim, d.hidden


def _kv(d: Dims) -> tuple[int, int]:
    return d.n_head_kv * d.head_dim, d.hidden


def _o(d: Dims) -> tuple[int, int]:
    return d.hidden, d.n_head * d.head_dim


def _up(d: Dims) -> tuple[int, int]:
    return d.n_ff, d.hidden


def _down(d: Dims) -> tuple[int, int]:
    return d.hidden, d.n_ff


def _emb(d: Dims) -> tuple[int, int]:
    return d.vocab, d.hidden


def _h(d: Dims) -> tuple[int]:
    return (d.hidden,)


def _hd(d: Dims) -> tuple[int]:
    return (d.head_dim,)


L = "model.layers.{bid}."
B = "blk.{bid}."

_COMMON = (
    TensorRule("model.embed_tokens.weight", "token_embd.weight", _emb),
    TensorRule("lm_head.weight", "output.weight", _emb, optional=True),
    TensorRule(L + "self_attn.v_proj.weight", B + "attn_v.weight", _kv),
    TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", _o),
    TensorRule(L + "mlp.gate_proj.weight", B + "ffn_gate.weight", _up),
    TensorRule(L + "mlp.up_proj.weight", B + "ffn_up.weight", _up),
    TensorRule(L + "mlp.down_proj.weight", B + "ffn_down.weight", _down),
)

LLAMA = ArchSpec(
    gguf_arch="llama",
    hf_architectures=("LlamaForCausalLM",),
    model_types=("llama",),
    rules=_COMMON + (
        TensorRule("model.norm.weight", "output_norm.weight", _h),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", _h),
        TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", _h),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", _q, "rope_q"),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", _kv, "rope_k"),
        TensorRule(L + "self_attn.q_proj.bias", B + "attn_q.bias", lambda d: _q(d)[:1], "rope_q", optional=True),
        TensorRule(L + "self_attn.k_proj.bias", B + "attn_k.bias", lambda d: _kv(d)[:1], "rope_k", optional=True),
        TensorRule(L + "self_attn.v_proj.bias", B + "attn_v.bias", lambda d: _kv(d)[:1], optional=True),
        TensorRule(L + "self_attn.o_proj.bias", B + "attn_output.bias", _h, optional=True),
    ),
)

GEMMA3 = ArchSpec(
    gguf_arch="gemma3",
    hf_architectures=("Gemma3ForCausalLM",),
    model_types=("gemma3_text",),
    rules=_COMMON + (
        TensorRule("model.norm.weight", "output_norm.weight", _h, "norm_plus_one"),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", _h, "norm_plus_one"),
        TensorRule(L + "post_attention_layernorm.weight", B + "post_attention_norm.weight", _h, "norm_plus_one"),
        TensorRule(L + "pre_feedforward_layernorm.weight", B + "ffn_norm.weight", _h, "norm_plus_one"),
        TensorRule(L + "post_feedforward_layernorm.weight", B + "post_ffw_norm.weight", _h, "norm_plus_one"),
        TensorRule(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", _hd, "norm_plus_one"),
        TensorRule(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", _hd, "norm_plus_one"),
        TensorRule(L + "self_attn.q_proj.weight", B + "attn_q.weight", _q),
        TensorRule(L + "self_attn.k_proj.weight", B + "attn_k.weight", _kv),
    ),
)

ARCHS: dict[str, ArchSpec] = {s.gguf_arch: s for s in (LLAMA, GEMMA3)}


def supported() -> str:
    return ", ".join(f"{s.gguf_arch} ({'/'.join(s.hf_architectures)})" for s in ARCHS.values())


def spec_for(config: dict[str, Any]) -> ArchSpec:
    """The table for a config.json; IncompatibleLayerError lists the supported ones otherwise."""
    archs = tuple(config.get("architectures") or ())
    mtype = config.get("model_type")
    for s in ARCHS.values():
        if any(a in s.hf_architectures for a in archs) or (not archs and mtype in s.model_types):
            if mtype is not None and mtype not in s.model_types:
                break
            return s
    raise IncompatibleLayerError(
        f"architecture {'/'.join(archs) or '?'} (model_type {mtype!r}) cannot be exported to GGUF by compress; "
        f"supported: {supported()}")


def rope_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that turns Hugging Face's half-split rope layout into llama.cpp's interleaved one:
    within each head, rows [0..h/2) and [h/2..h) are interleaved (what convert_hf_to_gguf's permute does)."""
    head = n_rows // n_head
    idx = np.arange(n_rows).reshape(n_head, 2, head // 2)
    return idx.swapaxes(1, 2).reshape(n_rows)
