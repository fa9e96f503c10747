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

from compress.errors import ArtifactError, IncompatibleLayerError

from .arch import ArchSpec, Dims
from .source import ExportSource

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def model_dims(src: ExportSource, spec: ArchSpec) -> Dims:
    cfg = src.config
    where = src.folder / "config.json"
    layers = sorted({int(m.group(1)) for n in src.logical_names() if (m := _LAYER.match(n))})
    if layers != list(range(len(layers))):
        raise ArtifactError(f"{src.folder}: layer indices {layers} are not contiguous from 0")
    n_layer = len(layers)
    vocab, hidden = _shape2(src, "model.embed_tokens.weight")
    n_ff = _shape2(src, "model.layers.0.mlp.gate_proj.weight")[0] if n_layer else 0
    head_dim = cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"])
    q_rows = _shape2(src, "model.layers.0.self_attn.q_proj.weight")[0] if n_layer else 0
    k_rows = _shape2(src, "model.layers.0.self_attn.k_proj.weight")[0] if n_layer else 0
    if q_rows % head_dim or k_rows % head_dim:
        raise ArtifactError(f"{src.folder}: q_proj has {q_rows} rows and k_proj {k_rows}, not multiples of "
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
    if n_layer == 0:
        raise ArtifactError(f"{src.folder}: the weights have no transformer layers")
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


def _rope_scaling(arch: str, scaling: dict, where: str) -> dict[str, Any]:
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind == "default":
        return {}
    if kind == "linear":
        return {f"{arch}.rope.scaling.type": "linear", f"{arch}.rope.scaling.factor": float(scaling["factor"])}
    raise IncompatibleLayerError(f"{where}: rope_type {kind!r} is not supported by the GGUF export "
                                 f"(supported: default, linear)")


def arch_metadata(spec: ArchSpec, cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    """``{arch}.*`` keys for llama.cpp, from the real dims; raises for settings llama.cpp cannot run."""
    a = spec.gguf_arch
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
    if a == "llama":
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise IncompatibleLayerError(f"{where}: hidden_act {act!r}; llama.cpp's llama graph uses silu")
        theta, scaling = rope_theta(cfg)
        md[f"{a}.rope.freq_base"] = theta
        md[f"{a}.rope.dimension_count"] = dims.head_dim
        md.update(_rope_scaling(a, scaling, where))
        if dims.head_dim * dims.n_head != dims.hidden:
            # llama.cpp assumes head_dim = hidden / heads unless told (fewer heads after pruning)
            md[f"{a}.attention.key_length"] = dims.head_dim
            md[f"{a}.attention.value_length"] = dims.head_dim
    elif a == "gemma3":
        md.update(_gemma3(cfg, dims, where))
    return md


def _gemma3(cfg: dict[str, Any], dims: Dims, where: str) -> dict[str, Any]:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            raise IncompatibleLayerError(f"{where}: {key}={cfg[key]}; llama.cpp's gemma3 graph does not apply it")
    if cfg.get("use_bidirectional_attention"):
        raise IncompatibleLayerError(f"{where}: use_bidirectional_attention is set; llama.cpp runs gemma3 causally")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act != "gelu_pytorch_tanh":
        raise IncompatibleLayerError(f"{where}: hidden_activation {act!r}; llama.cpp's gemma3 uses gelu (tanh)")
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
