"""Resident memory of an ONNX export in onnxruntime, phase by phase (issue #14).

    .venv/bin/python benchmarks/bench_onnx_memory.py runs/q14/smollm2-onnx-int4-t8 --prefill 2048 --decode 32
    .venv/bin/python benchmarks/bench_onnx_memory.py EXPORT --config session.disable_prepacking=1 --no-arena
    .venv/bin/python benchmarks/bench_onnx_memory.py EXPORT --chunk 0 --markdown   # the prompt in one run
    .venv/bin/python benchmarks/bench_onnx_memory.py EXPORT --tokenizer --markdown   # and text asked for

Each run is a fresh subprocess (``--child``) that does what the bench worker does (compress.harness.worker:
its backend preimport, then ``OnnxRuntime.load`` with ``n_ctx`` = prompt + new tokens + 8 and no checks),
reading /proc/self/status before and after loading (``--config``/``--no-arena``/``--opt-level`` applied to
:func:`runtimes.onnx_runtime.make_session`'s SessionOptions); with ``--tokenizer`` it then asks the runtime for its
tokenizer (tokenizer.json, read without transformers) and reads again; it prefills ``--prefill`` fixed token ids
through the runtime's KV path and prefill chunks (the shared fixed buffer where the export declares it, else the
growing cache; ``--chunk`` overrides the runtime's chunk of 256 tokens, 0 for one run), reads, decodes
``--decode`` steps and reads a last time. Each reading: VmHWM (peak), VmRSS and its split into RssAnon (heap,
arenas: what a phone must keep) and RssFile (mapped files: pages it can drop). Nothing else runs in that
process: the table is made here, in the parent.

Memory does not depend on machine load, so this may run beside other work.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("start", "session", "tokenizer", "prefill", "decode")
_STATUS = {"VmHWM:": "peak", "VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
           "disable": "ORT_DISABLE_ALL"}


def _status() -> dict[str, float]:
    """MiB from /proc/self/status (read directly: importing nothing between readings)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in _STATUS:
            out[_STATUS[key]] = int(line.split()[1]) / 1024
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """The measured process: load, prefill, decode, with a memory reading after each."""
    import numpy as np

    from compress.harness.worker import preimport
    from runtimes import DeviceProfile, get_runtime

    preimport("onnxruntime")  # what the bench worker imports before loading
    import onnxruntime as ort

    readings = {"start": _status()}
    original = ort.InferenceSession

    def session(path, so=None, **kw):
        # make_session's SessionOptions, with this run's overrides on top
        if spec["no_arena"]:
            so.enable_cpu_mem_arena = False
        if spec["opt_level"]:
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[spec["opt_level"]])
        for key, value in spec["config"].items():
            so.add_session_config_entry(key, value)
        return original(path, so, **kw)

    ort.InferenceSession = session
    folder = Path(spec["folder"])
    steps = spec["decode"]
    rt = get_runtime("onnxruntime")
    # compress.harness.worker.load_runtime's call (n_ctx as the worker sizes it), with this run's model file
    rt.load(folder, DeviceProfile(threads=spec["threads"]), n_ctx=spec["prefill"] + steps + 8, verify=False,
            model_file=spec["model_file"])
    readings["session"] = _status()
    if spec["tokenizer"]:
        rt.tokenizer  # noqa: B018  (read on first use, as a caller with text makes it)
        readings["tokenizer"] = _status()
    decoder = rt.decoder
    if spec["chunk"] is not None:
        decoder.prefill_chunk = spec["chunk"]
    vocab = decoder.layout.vocab or int(json.loads((folder / "config.json").read_text())["vocab_size"])
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, min(vocab, 32000), spec["prefill"]).tolist()
    # OnnxDecoder.generate's steps, with a reading between the prefill and the decode
    if decoder.shares_buffer:
        cache = decoder.new_cache(len(prompt) + steps)
        row = cache.feed(prompt)
        readings["prefill"] = _status()
        for _ in range(steps):
            row = cache.feed([int(row.argmax())])
    else:
        logits, past = decoder.run(prompt, None, 0, 1)
        readings["prefill"] = _status()
        for i in range(steps):
            logits, past = decoder.run([int(logits[-1].argmax())], past, len(prompt) + i, 1)
    readings["decode"] = _status()
    return {"readings": readings, "shared_kv": decoder.shares_buffer, "chunk": decoder.prefill_chunk,
            "onnxruntime": ort.__version__, "imported": sorted(m for m in ("torch", "transformers") if m in sys.modules)}


def measure(folder: Path, *, model_file: str = "model.onnx", prefill: int = 2048, decode: int = 32, threads: int = 2,
            config: dict[str, str] | None = None, no_arena: bool = False, opt_level: str | None = None,
            tokenizer: bool = False, chunk: int | None = None) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its readings (MiB) with the file sizes."""
    folder = Path(folder).absolute()
    spec = {"folder": str(folder), "model_file": model_file, "prefill": prefill, "decode": decode, "threads": threads,
            "config": config or {}, "no_arena": no_arena, "opt_level": opt_level, "tokenizer": tokenizer,
            "chunk": chunk}
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{folder}: the measuring process failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    files = [folder / model_file, *sorted(folder.glob(model_file + ".data")), *sorted(folder.glob("*.onnx.data"))]
    result["file_mb"] = sum(f.stat().st_size for f in dict.fromkeys(files) if f.exists()) / 2**20
    result["kv_mb"] = _kv_mb(folder, prefill + decode)
    result["spec"] = spec
    return result


def _kv_mb(folder: Path, positions: int) -> float:
    """fp32 KV cache of ``positions`` from config.json (keys and values, every layer)."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * kv_heads * head * 4 * positions / 2**20


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: per run, RssAnon / RssFile (MiB) after each phase, the peak (VmHWM) once loaded and at the end,
    and the #14 target (file + fp32 KV cache at the context + 150 MiB)."""
    head = ("| run | KV path | file MiB | KV MiB | anon / file: start | after load | after tokenizer | after prefill | "
            "after decode | peak at load | peak | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in rows:
        rd = r["readings"]
        cells = [f"{rd[p]['anon']:.0f} / {rd[p]['file']:.0f}" if p in rd else "-" for p in PHASES]
        target = r["file_mb"] + r["kv_mb"] + 150
        peak = rd["decode"]["peak"]
        chunk = r.get("chunk", r["spec"]["chunk"])
        path = ("shared" if r["shared_kv"] else "growing") + (f", chunks of {chunk}" if chunk else "")
        over = " **over**" if peak > target else ""
        lines.append(f"| {label} | {path} | {r['file_mb']:.0f} | {r['kv_mb']:.0f} | " + " | ".join(cells) +
                     f" | {rd['session']['peak']:.0f} | {peak:.0f}{over} | {target:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="export-onnx folders (LABEL=FOLDER to name a row)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model-file", default="model.onnx")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, help="prefill in runs of this many tokens (0: one run; default: the "
                                              "runtime's, runtimes.onnx_kv.PREFILL_CHUNK)")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="a session config entry on top of make_session's (repeatable)")
    ap.add_argument("--no-arena", action="store_true", help="enable_cpu_mem_arena = False")
    ap.add_argument("--opt-level", choices=sorted(_LEVELS))
    ap.add_argument("--tokenizer", action="store_true", help="also read the runtime's tokenizer after loading, as a "
                                                             "caller with text does (the bench worker does not)")
    ap.add_argument("--markdown", action="store_true", help="print the markdown table (else JSON lines)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    config = dict(c.split("=", 1) for c in args.config)
    rows = []
    for given in args.folders:
        label, _, path = str(given).rpartition("=")
        folder = Path(path)
        r = measure(folder, model_file=args.model_file, prefill=args.prefill, decode=args.decode,
                    threads=args.threads, config=config, no_arena=args.no_arena, opt_level=args.opt_level,
                    tokenizer=args.tokenizer, chunk=args.chunk)
        rows.append((label or folder.name, r))
        if not args.markdown:
            print(json.dumps({"label": label or folder.name, **r}))
    if args.markdown:
        print("Command: `" + shlex.join(["python", "benchmarks/bench_onnx_memory.py", *sys.argv[1:]]) + "`\n")
        print(table(rows))
        imported = {label: r["imported"] for label, r in rows if r["imported"]}
        print("\ntorch / transformers in a measured process: " +
              ("; ".join(f"{k}: {', '.join(v)}" for k, v in imported.items()) if imported else "in none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
