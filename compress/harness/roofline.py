"""The decode roofline: memory bandwidth ÷ bytes read per decoded token.

Decoding one token reads every weight matrix once (at its stored precision; the vocabulary
projection included), one row of the embedding table (all of it when the table is tied to the
vocabulary projection, which reads it whole) and the KV cache up to the current position. On a CPU
that bound is the memory bandwidth, so ``decode tok/s ÷ (bandwidth / bytes per token)`` says how much
of the machine a runtime uses.

    bw = bandwidth_gb_s(threads=2)            # measured once per machine and thread count, cached
    b = bytes_per_token(runtime, mean_position=192)
    fraction = decode_tok_s / (bw * 1e9 / b["total"])
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_BW_FILE = "bandwidth.json"


def bandwidth_gb_s(threads: int, *, mb: int = 512, repeats: int = 5, cache: bool = True) -> float:
    """Read bandwidth (GB/s) of this machine with ``threads`` threads: the best of ``repeats`` sums over a
    ``mb``-MB float32 tensor (a read-reduce streams memory like a decode step streams weights). Cached in
    ``$COMPRESS_CACHE/bandwidth.json`` per host and thread count."""
    from compress.bundled import cache_root

    key = f"{platform.node()}:{threads}"
    path = cache_root() / _BW_FILE
    table: dict[str, Any] = {}
    if cache and path.is_file():
        try:
            table = json.loads(path.read_text())
            if key in table:
                return float(table[key]["gb_s"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            table = {}  # a damaged cache is measured again and rewritten
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
        best = float("inf")
        for _ in range(repeats + 1):  # the first pass faults the pages in
            t0 = time.perf_counter()
            float(x.sum())
            best = min(best, time.perf_counter() - t0)
        gb_s = x.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(old)
    if cache:
        table[key] = {"gb_s": round(gb_s, 2), "mb": mb, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=2))
    log.info("memory bandwidth with %d threads: %.1f GB/s", threads, gb_s)
    return gb_s


def bytes_per_token(runtime, mean_position: float) -> dict[str, float]:
    """Bytes one decode step reads in ``runtime`` (a loaded pytorch, onnxruntime(-genai) or llama.cpp runtime):
    ``weights`` + ``kv`` (the cache at ``mean_position``) = ``total``."""
    name = runtime.name
    if name == "pytorch":
        weights, kv_pos = _torch_bytes(runtime.model)
    elif name in ("onnxruntime", "onnxruntime-genai"):  # path: the model file, for both
        weights = _onnx_bytes(runtime.path)
        kv_pos = _kv_per_position(json.loads((runtime.path.parent / "config.json").read_text()), 4)
    elif name == "llama.cpp":
        weights, kv_pos = _gguf_bytes(runtime.path)
    else:
        raise ValueError(f"no byte count for runtime {name!r}")
    kv = kv_pos * mean_position
    return {"weights": float(weights), "kv": float(kv), "total": float(weights + kv)}


def _kv_per_position(cfg: dict[str, Any], elem_bytes: int) -> float:
    """K and V bytes one position adds to the cache, over all layers (HF config keys)."""
    cfg = cfg.get("text_config", cfg)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2.0 * cfg["num_hidden_layers"] * kv_heads * head_dim * elem_bytes


def _torch_bytes(model) -> tuple[float, float]:
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
    elem = next(model.parameters()).element_size()
    return float(total), _kv_per_position(model.config.to_dict(), elem)


def _onnx_bytes(path: Path) -> float:
    """Initializer bytes; a table only ever gathered from (the embedding) counts one row."""
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


def _gguf_bytes(path: Path) -> tuple[float, float]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    total = float(sum(int(t.n_bytes) for t in tensors.values()))
    emb = tensors.get("token_embd.weight")
    if emb is not None and "output.weight" in tensors:  # untied: one embedding row per token
        rows = int(emb.shape[-1])  # gguf lists dims fastest-first: (hidden, vocab)
        total -= int(emb.n_bytes) * (1 - 1 / rows)

    def field(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    layers = field(f"{arch}.block_count")
    heads = field(f"{arch}.attention.head_count")
    kv_heads = field(f"{arch}.attention.head_count_kv") or heads
    head_dim = field(f"{arch}.attention.key_length") or field(f"{arch}.embedding_length") // heads
    # llama.cpp's default cache type is F16
    return total, 2.0 * layers * kv_heads * head_dim * 2
