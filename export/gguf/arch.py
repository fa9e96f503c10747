"""The GGUF view of the family table: Hugging Face tensor names -> GGUF names, shapes and transforms.

Nothing here is per family: each :class:`ArchSpec` is computed from a row of :mod:`compress.families`
and gguf-py's tensor name map for its llama.cpp architecture (``gguf.get_tensor_name_map``), with
llama.cpp's conventions (convert_hf_to_gguf.py) applied from the row's fields:

- ``rope_permute``: q/k rows are reordered per head (``rope_q`` / ``rope_k``) because llama.cpp's llama
  graph rotates adjacent pairs (GPT-J style) while Hugging Face rotates the two halves of each head.
- ``norm_offset`` 1 (Gemma): every RMSNorm weight is stored as ``1 + w`` (``norm_plus_one``): Hugging
  Face's Gemma norm computes ``x * (1 + w)``, llama.cpp's computes ``x * w``.
- fused projections (Phi-3's ``qkv_proj`` / ``gate_up_proj``) map to ``attn_qkv`` / ``ffn_up`` as they are:
  llama.cpp's phi3 graph splits them itself.
- tied embeddings: no ``output.weight``; llama.cpp reuses ``token_embd.weight``.

    >>> spec = spec_for({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    >>> spec.gguf_arch
    'llama'
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from compress.families import FAMILIES, Family, family_for
from compress.families import supported as _supported


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
    family: Family
    rules: tuple[TensorRule, ...]

    @property
    def gguf_arch(self) -> str:
        return self.family.gguf_arch

    @property
    def hf_architectures(self) -> tuple[str, ...]:
        return self.family.hf_architectures

    @property
    def model_types(self) -> tuple[str, ...]:
        return self.family.model_types

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


def _shapes(fam: Family) -> dict[str, Shape]:
    """Hugging Face (out, in) shape of each GGUF tensor kind."""
    up = 2 if fam.fused_gate_up else 1
    return {
        "token_embd": lambda d: (d.vocab, d.hidden), "output": lambda d: (d.vocab, d.hidden),
        "attn_q": lambda d: (d.n_head * d.head_dim, d.hidden),
        "attn_k": lambda d: (d.n_head_kv * d.head_dim, d.hidden),
        "attn_v": lambda d: (d.n_head_kv * d.head_dim, d.hidden),
        "attn_qkv": lambda d: ((d.n_head + 2 * d.n_head_kv) * d.head_dim, d.hidden),
        "attn_output": lambda d: (d.hidden, d.n_head * d.head_dim),
        "ffn_gate": lambda d: (d.n_ff, d.hidden), "ffn_up": lambda d: (up * d.n_ff, d.hidden),
        "ffn_down": lambda d: (d.hidden, d.n_ff),
        "attn_q_norm": lambda d: (d.head_dim,), "attn_k_norm": lambda d: (d.head_dim,),
    }


def _hf_tensors(fam: Family) -> list[tuple[str, bool]]:
    """(Hugging Face tensor name, optional) of every tensor the family may hold."""
    out = [("model.embed_tokens.weight", False), ("lm_head.weight", True), ("model.norm.weight", False)]
    layer = "model.layers.{bid}."
    out += [(f"{layer}{n}.weight", False) for n in fam.norms.values() if n]
    for m in fam.linears:
        out.append((f"{layer}{m}.weight", False))
        if m.startswith("self_attn.") and fam.attn_bias != "none":
            out.append((f"{layer}{m}.bias", not (fam.attn_bias == "qkv" and m in fam.qkv)))
    if fam.qk_norm:
        out += [(f"{layer}self_attn.q_norm.weight", False), (f"{layer}self_attn.k_norm.weight", False)]
    return out


@functools.lru_cache(maxsize=None)
def spec_for_family(fam: Family) -> ArchSpec:
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[fam.gguf_arch.upper()], 1)
    shapes = _shapes(fam)
    rules = []
    for hf, optional in _hf_tensors(fam):
        name = tmap.get_name(hf.format(bid=0), try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KeyError(f"gguf-py has no {fam.gguf_arch} name for {hf} (family table row {fam.name})")
        g = name.replace("blk.0.", "blk.{bid}.")
        kind, suffix = g.removeprefix("blk.{bid}.").rsplit(".", 1)
        if kind.endswith("norm") and kind not in shapes:
            shape: Shape = lambda d: (d.hidden,)  # noqa: E731
        else:
            full = shapes[kind]
            shape = full if suffix == "weight" else (lambda d, full=full: full(d)[:1])
        transform = None
        if fam.rope_permute and kind in ("attn_q", "attn_k"):
            transform = "rope_q" if kind == "attn_q" else "rope_k"
        elif fam.norm_offset == 1.0 and kind.endswith("norm"):
            transform = "norm_plus_one"
        rules.append(TensorRule(hf, g, shape, transform, optional))
    return ArchSpec(fam, tuple(rules))


class _Archs(dict):
    """family name -> ArchSpec, built on first use (gguf-py's map is imported then)."""

    def __missing__(self, key: str) -> ArchSpec:
        fam = next((f for f in FAMILIES if f.name == key), None)
        if fam is None:
            raise KeyError(key)
        self[key] = spec_for_family(fam)
        return self[key]

    def values(self):  # every row, not only those built so far
        return [self[f.name] for f in FAMILIES]


ARCHS: dict[str, ArchSpec] = _Archs()


def supported() -> str:
    return _supported()


def spec_for(config: dict[str, Any]) -> ArchSpec:
    """The table for a config.json; IncompatibleLayerError lists the supported ones otherwise."""
    return spec_for_family(family_for(config, "GGUF export"))


def dry_run_note(cfg, folder, config: dict[str, Any]) -> str:
    """A recipe's ``--dry-run`` of an export-gguf step (the kinds table's ``dry_run``): the architecture and,
    for a k-quant, every row width the type's 256-wide super-blocks must divide, from config.json alone (a
    quantize step upstream keeps the model's widths). IncompatibleLayerError when the export would refuse.

        dry_run_note(GGUFConfig(qtype="Q4_K_M"), folder, config)   # "Q4_K_M, architecture llama"
    """
    from .config import is_kquant
    from .kquant import check_kquant_rows, config_row_widths

    note = f"{cfg.qtype}, architecture {spec_for(config).gguf_arch}"
    if is_kquant(cfg.qtype):
        rows = check_kquant_rows(cfg.qtype, config_row_widths(config))
        note += f"; {rows}" if rows else ""
    return note


def rope_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that turns Hugging Face's half-split rope layout into llama.cpp's interleaved one:
    within each head, rows [0..h/2) and [h/2..h) are interleaved (what convert_hf_to_gguf's permute does)."""
    head = n_rows // n_head
    idx = np.arange(n_rows).reshape(n_head, 2, head // 2)
    return idx.swapaxes(1, 2).reshape(n_rows)
