"""Latency and memory of one runtime × artifact, in a process of its own.

    python -m compress.harness.worker SPEC.json RESULT.json

Its own process so that peak RSS (``ru_maxrss``) is this runtime's and nothing else's, and so that one
runtime's thread pools and allocator state cannot slow the next. SPEC holds the runtime name, the
path it loads, the profile, the prompt token ids and the repetition counts; RESULT gets load time,
per-repetition time to first token / prefill / decode speed, bytes read per decoded token and RSS.
Only the runtime's own backend is imported (no torch in a llama.cpp worker).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from compress.memory import memory_status, peak_rss_mb  # noqa: F401  (peak_rss_mb: re-exported)


def preimport(runtime: str) -> None:
    """Import the backend before the load clock starts: load time is reading weights, not Python imports."""
    from runtimes import import_backend

    import_backend(runtime)


def load_runtime(runtime: str, path: str, profile, n_ctx: int):
    """A loaded runtime, without load-time checks (a GGUF import's re-check is evaluation, not loading)."""
    from runtimes import get_runtime

    rt = get_runtime(runtime)
    rt.load(path, profile, n_ctx=n_ctx, verify=False)
    return rt


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, warm up, time the repetitions; memory is read before any bookkeeping.

    Bytes per token (which parses the model file for ONNX and GGUF) runs only after the last memory
    reading: done earlier, its parse landed in this process's high-water mark and made every ONNX row
    look 3x its runtime's real peak."""
    from runtimes.base import DeviceProfile

    from .roofline import bytes_per_token

    preimport(spec["runtime"])
    start = memory_status()
    profile = DeviceProfile(**spec["profile"])
    prompt, new = list(spec["prompt_ids"]), int(spec["new_tokens"])
    # context depth d: the prompt is the d tokens before it plus the prompt itself, as a chat's history
    deep = {int(d): list(ids) for d, ids in spec.get("depth_ids", {}).items()}
    longest = max([len(prompt)] + [len(ids) for ids in deep.values()])
    t0 = time.perf_counter()
    rt = load_runtime(spec["runtime"], spec["path"], profile, n_ctx=longest + new + 8)
    load_s = time.perf_counter() - t0
    loaded = memory_status()

    def timed(ids: list[int]) -> tuple[list[dict[str, float]], Any]:
        for _ in range(int(spec["warmup"])):
            rt.generate(ids, new)
        runs = []
        for _ in range(int(spec["repetitions"])):
            g = rt.generate(ids, new)
            runs.append({"ttft_s": g.time_to_first_token_s, "prefill_tok_s": g.prefill_tokens_per_s,
                         "decode_tok_s": g.decode_tokens_per_s, "new_tokens": len(g.new_ids), "total_s": g.total_s})
        return runs, g

    runs, g = timed(prompt)
    depth_runs = {d: timed(ids)[0] for d, ids in sorted(deep.items())}
    generated = memory_status()
    # bookkeeping from here on: nothing below may move the figures above
    return {"runtime": rt.name, "runtime_version": rt.version(), "load_s": load_s, "runs": runs,
            "depth_runs": depth_runs,
            "new_ids": g.new_ids, "bytes_per_token": bytes_per_token(rt, len(prompt) + new / 2),
            "rss_start_mb": start["peak"], "rss_loaded_mb": loaded["peak"], "peak_rss_mb": generated["peak"],
            "memory": {"start": start, "loaded": loaded, "generated": generated},
            "execution_provider": getattr(rt, "provider", None)}


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    try:
        result = measure(json.loads(spec_path.read_text()))
        rc = 0
    except Exception as e:  # the parent re-raises typed errors by class name
        result = {"error": str(e), "error_type": type(e).__name__, "traceback": traceback.format_exc()}
        rc = 1
    out_path.write_text(json.dumps(result))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
