"""What one decode step reads from memory, by model format: weight bytes and KV-cache bytes per position.

Each runtime answers ``weight_bytes()`` and ``kv_bytes_per_position()`` through these, so the roofline
(``compress.harness.roofline``) never asks which runtime it holds. Decoding one token reads every weight
matrix once at its stored precision (the vocabulary projection included), one row of the embedding table
(all of it when the table is tied to the vocabulary projection, which reads it whole) and the KV cache
up to the current position.

    weights = gguf_weight_bytes(Path("model.Q4_0.gguf"))         # bytes, embedding counted as one row
    kv = gguf_kv_bytes_per_position(Path("model.Q4_0.gguf"))     # K and V of every layer, F16

The model files are parsed when asked, never at load: a parse inside a measured process would land in its
peak RSS (the bench worker asks only after its last memory reading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GGUF_KV_BYTES = 2  # llama.cpp's default cache type is F16


def kv_bytes_per_position(cfg: dict[str, Any], elem_bytes: int) -> float:
    """K and V bytes one position adds to the cache, over all layers, from Hugging Face config keys.

    >>> kv_bytes_per_position({"num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
    ...                        "hidden_size": 96}, 4)
    512.0
    """
    cfg = cfg.get("text_config", cfg)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2.0 * cfg["num_hidden_layers"] * kv_heads * head_dim * elem_bytes


def torch_weight_bytes(model) -> float:
    """Parameter and buffer bytes of a transformers model, each shared tensor once; an untied embedding
    table counts one row."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    seen, total = set(), 0
    # buffers too: norms and rotary frequencies are read every step (a few KB next to the matrices)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.data_ptr() == emb.data_ptr():
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    emb_bytes = emb.numel() * emb.element_size()
    total += emb_bytes if tied else emb_bytes / emb.shape[0]
    return float(total)


def torch_kv_bytes_per_position(model) -> float:
    """The cache of a transformers model holds its parameters' dtype."""
    return kv_bytes_per_position(model.config.to_dict(), next(model.parameters()).element_size())


def onnx_weight_bytes(path: Path) -> float:
    """Initializer bytes of an ONNX file; a table only ever gathered from (the embedding) counts one row."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.op_type)
    total = 0.0
    for init in m.graph.initializer:
        size = _initializer_bytes(init)
        if consumers.get(init.name) == {"Gather"} and init.dims and init.dims[0] > 1:
            size /= init.dims[0]
        total += size
    return total


def onnx_kv_bytes_per_position(path: Path, dims: tuple[int, int] | None = None) -> float:
    """From the graph's ``past_key_values.*`` inputs, [batch, kv_heads, past, head_dim] each, at their element
    type (float32, or float16 for an export made with ``kv_dtype: float16``). ``dims`` (kv_heads, head_dim)
    stand in for dimensions the graph leaves symbolic (onnxruntime-genai's builder: ``kv_cache_dim``)."""
    import onnx

    from compress.errors import ArtifactError

    total = 0
    for i in onnx.load(str(path), load_external_data=False).graph.input:
        if i.name.startswith("past_key_values."):
            t = i.type.tensor_type
            kv_heads, head_dim = t.shape.dim[1].dim_value, t.shape.dim[3].dim_value
            if not (kv_heads and head_dim):  # symbolic: 0 would make the cache free and the roofline wrong
                if dims is None:
                    raise ArtifactError(f"{path}: {i.name} leaves its KV heads or head size symbolic; the KV "
                                        "bytes per position need them")
                kv_heads, head_dim = kv_heads or dims[0], head_dim or dims[1]
            total += kv_heads * head_dim * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return float(total)


def _initializer_bytes(init) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    import onnx

    n = 1
    for d in init.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def gguf_weight_bytes(path: Path) -> float:
    """Tensor bytes of a GGUF file; an untied ``token_embd`` counts one row."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    total = float(sum(int(t.n_bytes) for t in tensors.values()))
    emb = tensors.get("token_embd.weight")
    if emb is not None and "output.weight" in tensors:  # untied: one embedding row per token
        rows = int(emb.shape[-1])  # gguf lists dims fastest-first: (hidden, vocab)
        total -= int(emb.n_bytes) * (1 - 1 / rows)
    return total


def gguf_kv_bytes_per_position(path: Path) -> float:
    """From the file's attention metadata, at llama.cpp's default F16 cache."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def field(key):
        f = fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    layers = field(f"{arch}.block_count")
    heads = field(f"{arch}.attention.head_count")
    kv_heads = field(f"{arch}.attention.head_count_kv") or heads
    head_dim = field(f"{arch}.attention.key_length") or field(f"{arch}.embedding_length") // heads
    return 2.0 * layers * kv_heads * head_dim * GGUF_KV_BYTES
