"""Architecture hyperparameters for GGUF, taken from the tensors a model really has.

A pruned model (fewer layers, a narrower MLP, fewer heads) may carry a config.json that was not
updated, or one that was: either way the GGUF must describe the tensors. So the dimensions are read
from the weights and checked against config.json; a disagreement is refused with both values named,
because llama.cpp would otherwise build the wrong graph (or refuse the file with a less useful message).

    >>> dims = model_dims(src, spec)
    >>> keys = arch_metadata(spec, src.config, dims)   # {"llama.block_count": 30, ...}
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from compress.errors import ArtifactError, IncompatibleLayerError
from compress.families import check_config, longrope, rotary_dim

from .arch import ArchSpec, Dims
from .source import ExportSource

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def model_dims(src: ExportSource, spec: ArchSpec) -> Dims:
    cfg = src.config
    fam = spec.family
    where = src.folder / "config.json"
    layers = sorted({int(m.group(1)) for n in src.logical_names() if (m := _LAYER.match(n))})
    if layers != list(range(len(layers))):
        raise ArtifactError(f"{src.folder}: layer indices {layers} are not contiguous from 0")
    n_layer = len(layers)
    if n_layer == 0:
        raise ArtifactError(f"{src.folder}: the weights have no transformer layers")
    vocab, hidden = _shape2(src, "model.embed_tokens.weight")
    head_dim = cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"])
    p = "model.layers.0."
    n_ff = _shape2(src, f"{p}{fam.gate_up[0]}.weight")[0] // (2 if fam.fused_gate_up else 1)
    if fam.fused_qkv:
        # q, k and v rows stacked: the query heads come from config.json, the rest is two equal parts
        rows = _shape2(src, f"{p}{fam.qkv[0]}.weight")[0]
        q_rows = int(cfg["num_attention_heads"]) * head_dim
        k_rows = (rows - q_rows) // 2
    else:
        q_rows = _shape2(src, f"{p}{fam.qkv[0]}.weight")[0]
        k_rows = _shape2(src, f"{p}{fam.qkv[1]}.weight")[0]
    if q_rows % head_dim or k_rows % head_dim or k_rows <= 0:
        raise ArtifactError(f"{src.folder}: q has {q_rows} rows and k {k_rows}, not whole heads of "
                            f"head_dim {head_dim} (config.json)")
    dims = Dims(n_layer=n_layer, hidden=hidden, n_ff=n_ff, n_head=q_rows // head_dim, n_head_kv=k_rows // head_dim,
                head_dim=head_dim, vocab=vocab)
    for field, key in (("n_layer", "num_hidden_layers"), ("hidden", "hidden_size"), ("n_ff", "intermediate_size"),
                       ("n_head", "num_attention_heads"), ("n_head_kv", "num_key_value_heads"),
                       ("vocab", "vocab_size")):
        want = cfg.get(key)
        if key == "num_key_value_heads" and want is None:
            want = cfg.get("num_attention_heads")
        if want is not None and int(want) != getattr(dims, field):
            raise ArtifactError(f"{where}: {key} is {want} but the weights have {getattr(dims, field)} "
                                f"(a pruned model whose config was not updated?)")
    return dims


def _shape2(src: ExportSource, name: str) -> tuple[int, int]:
    if not src.has(name):
        raise ArtifactError(f"{src.folder}: tensor {name} is missing from the weights")
    shape = src.shape(name)
    if len(shape) != 2:
        raise ArtifactError(f"{src.folder}: tensor {name} has shape {list(shape)}, expected 2 dimensions")
    return int(shape[0]), int(shape[1])


def rope_theta(cfg: dict[str, Any], layer_type: str | None = None, default: float = 10000.0) -> tuple[float, dict]:
    """(theta, rope parameters) from transformers 5's ``rope_parameters`` or 4.x's ``rope_theta``."""
    params = cfg.get("rope_parameters") or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    elif layer_type is not None and layer_type != "full_attention":
        # transformers 4.x Gemma3: the local layers' base lives in rope_local_base_freq
        return float(cfg.get("rope_local_base_freq", default)), {}
    theta = params.get("rope_theta", cfg.get("rope_theta", default))
    scaling = dict(params) if params else dict(cfg.get("rope_scaling") or {})
    return float(theta), scaling


def _rope_scaling(arch: str, scaling: dict, where: str, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind in ("default", "llama3"):  # llama3: the rope_freqs tensor (see rope_freqs)
        return {}
    if kind == "linear":
        return {f"{arch}.rope.scaling.type": "linear", f"{arch}.rope.scaling.factor": float(scaling["factor"])}
    if kind in ("longrope", "su") and cfg is not None:
        # the factors go in the rope_factors_long/short tensors (longrope_factors); llama.cpp scales cos/sin by
        # attn_factor (its rope scaling type stays "none": no YaRN ramp), as transformers' attention_scaling
        return {f"{arch}.rope.scaling.attn_factor": longrope(cfg, where).attention_factor}
    raise IncompatibleLayerError(f"{where}: rope_type {kind!r} is not supported by the GGUF export "
                                 f"(supported: default, linear, llama3, longrope)")


def arch_metadata(spec: ArchSpec, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    """``{arch}.*`` keys for llama.cpp, from the real dims; raises for settings llama.cpp cannot run.
    The common keys, then each group the family row names in ``gguf_keys``."""
    fam = spec.family
    a = fam.gguf_arch
    check_config(fam, cfg, where)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    md: dict[str, Any] = {
        f"{a}.context_length": int(cfg.get("max_position_embeddings", 2048)),
        f"{a}.embedding_length": dims.hidden,
        f"{a}.block_count": dims.n_layer,
        f"{a}.feed_forward_length": dims.n_ff,
        f"{a}.attention.head_count": dims.n_head,
        f"{a}.attention.head_count_kv": dims.n_head_kv,
        f"{a}.attention.layer_norm_rms_epsilon": eps,
        f"{a}.vocab_size": dims.vocab,
    }
    if fam.gguf_q_is_square and dims.head_dim * dims.n_head != dims.hidden:
        raise IncompatibleLayerError(
            f"{where}: {dims.n_head} query heads of {dims.head_dim} ({dims.n_head * dims.head_dim} rows) for hidden "
            f"{dims.hidden}; llama.cpp's {a} graph takes q as hidden x hidden, so a {fam.name} model with fewer query "
            f"heads has no GGUF form (prune MLP channels and KV heads only, or export ONNX)")
    if dims.head_dim * dims.n_head != dims.hidden:
        # llama.cpp assumes head_dim = hidden / heads unless told (Qwen3; fewer heads after pruning)
        md[f"{a}.attention.key_length"] = dims.head_dim
        md[f"{a}.attention.value_length"] = dims.head_dim
    for group in fam.gguf_keys:
        md.update(_GROUPS[group](a, cfg, dims, where))
    return md


def _rope(a: str, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    theta, scaling = rope_theta(cfg)
    # partial rotary (Phi-4-mini): llama.cpp rotates the first dimension_count dims of each head, as transformers
    md = {f"{a}.rope.freq_base": theta, f"{a}.rope.dimension_count": rotary_dim(cfg, dims.head_dim)}
    md.update(_rope_scaling(a, scaling, where, cfg))
    return md


def _head_dims(a: str, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    return {f"{a}.attention.key_length": dims.head_dim, f"{a}.attention.value_length": dims.head_dim}


def _phi3(a: str, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    # llama.cpp's converter writes these for every phi3 (0 = no sliding window; llama.cpp ignores it anyway)
    orig = cfg.get("original_max_position_embeddings") or cfg.get("max_position_embeddings", 4096)
    return {f"{a}.rope.scaling.original_context_length": int(orig),
            f"{a}.attention.sliding_window": int(cfg.get("sliding_window") or 0)}


def rope_freqs(cfg: dict[str, Any], head_dim: int) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` tensor for ``rope_type: llama3`` (None otherwise): the factor each
    frequency is divided by, as convert_hf_to_gguf.py computes it from the config."""
    theta, p = rope_theta(cfg)
    if (p.get("rope_type") or p.get("type")) != "llama3":
        return None
    d = head_dim
    freqs = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    factor = float(p.get("factor", 8.0))
    low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old = float(p.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    out = np.where(wavelen < old / high, 1.0,
                   np.where(wavelen > old / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _gemma3(a: str, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            raise IncompatibleLayerError(f"{where}: {key}={cfg[key]}; llama.cpp's gemma3 graph does not apply it")
    if cfg.get("use_bidirectional_attention"):
        raise IncompatibleLayerError(f"{where}: use_bidirectional_attention is set; llama.cpp runs gemma3 causally")
    full, full_scaling = rope_theta(cfg, "full_attention", default=1_000_000.0)
    local, local_scaling = rope_theta(cfg, "sliding_attention", default=10_000.0)
    if _rope_scaling("gemma3", local_scaling, where):
        raise IncompatibleLayerError(f"{where}: rope scaling on sliding layers is not supported by llama.cpp")
    md = {
        "gemma3.attention.key_length": dims.head_dim,
        "gemma3.attention.value_length": dims.head_dim,
        "gemma3.rope.freq_base": full,
        "gemma3.rope.freq_base_swa": local,
        "gemma3.attention.sliding_window": int(cfg.get("sliding_window") or 0),
        "gemma3.attention.sliding_window_pattern": swa_period(cfg, dims.n_layer, where),
    }
    md.update(_rope_scaling("gemma3", full_scaling, where))
    return md


def longrope_factors(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """llama.cpp's ``rope_factors_long`` / ``rope_factors_short`` tensors for Phi-3's longrope (empty
    otherwise): what each rotary frequency is divided by, the config's lists as they are. llama.cpp uses the
    long ones when the context it was given (n_ctx) exceeds rope.scaling.original_context_length."""
    lr = longrope(cfg)
    if lr is None:
        return {}
    return {"rope_factors_long.weight": np.asarray(lr.long_factor, np.float32),
            "rope_factors_short.weight": np.asarray(lr.short_factor, np.float32)}


def generated_tensor(gguf_name: str, cfg: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """A GGUF tensor computed from the config rather than read from the weights."""
    if gguf_name == "rope_freqs.weight":
        out = rope_freqs(cfg, 2 * shape[0])
        if out is not None:
            return out
    out = longrope_factors(cfg).get(gguf_name)
    if out is not None and tuple(out.shape) == tuple(shape):
        return out
    raise ArtifactError(f"no way to compute the GGUF tensor {gguf_name} from the config")


_GROUPS = {"rope": _rope, "head_dims": _head_dims, "phi3": _phi3, "gemma3": _gemma3}


def swa_period(cfg: dict[str, Any], n_layer: int, where: str) -> int:
    """The period p with layer i sliding iff i % p < p - 1 (llama.cpp's only way to describe gemma3's
    layer pattern). Pruned models keep their own ``layer_types``; a pattern no period can express
    (e.g. two full layers in a row after pruning) is refused rather than run with the wrong masks."""
    types = cfg.get("layer_types")
    if types is None:
        p = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        return p
    if len(types) != n_layer:
        raise ArtifactError(f"{where}: layer_types has {len(types)} entries for {n_layer} layers")
    sliding = [t == "sliding_attention" for t in types]
    for p in range(1, n_layer + 2):
        if all(s == (i % p < p - 1) for i, s in enumerate(sliding)):
            return p
    raise IncompatibleLayerError(f"{where}: layer_types {types} is not periodic (sliding every layer except each "
                                 f"p-th); llama.cpp's gemma3 cannot express it")


def gemma3_query_scale(cfg: dict[str, Any], dims: Dims) -> float:
    """Factor folded into gemma3's q_norm weights so llama.cpp's fixed attention scale matches ours.

    Hugging Face scales scores by query_pre_attn_scalar**-0.5; llama.cpp by head_dim**-0.5 (by
    (hidden/heads)**-0.5 for the 62-layer 27B). Equal for the released models, not for a model whose
    head_dim differs from query_pre_attn_scalar (or a 62-layer pruned one). q is normed, scaled by its
    norm weight, then rotated (linear), so scaling the norm weight scales the scores exactly."""
    qpas = float(cfg.get("query_pre_attn_scalar") or dims.head_dim)
    llama_cpp_dim = dims.hidden / dims.n_head if dims.n_layer == 62 else dims.head_dim
    return math.sqrt(llama_cpp_dim / qpas)
