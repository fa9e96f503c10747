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
    """Bytes one decode step reads in a loaded ``runtime`` (any :class:`runtimes.Runtime`): ``weights`` +
    ``kv`` (the cache at ``mean_position``) = ``total``."""
    weights = runtime.weight_bytes()
    kv = runtime.kv_bytes_per_position() * mean_position
    return {"weights": float(weights), "kv": float(kv), "total": float(weights + kv)}
