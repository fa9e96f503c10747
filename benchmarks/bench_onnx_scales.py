"""float32 vs float16 MatMulNBits scales (export-onnx ``scale_type``) on one quantized artifact: file size, speed
in onnxruntime (prefill and decode, A/B alternated on one machine), and agreement with the artifact in PyTorch.

    .venv/bin/python benchmarks/bench_onnx_scales.py runs/default/quantize-mixed-onnx --out runs/bench_onnx_scales \
        --threads 2 --repetitions 7

Exports the artifact twice (``--scale-type float32`` and ``auto``; an earlier export in ``--out`` is reused), then
for each repetition runs both files in turn: a prefill of ``--prefill`` token ids, then ``--new`` greedy tokens
after a 4-token prompt. Agreement: KL(PyTorch || onnxruntime) and top-1 on ``--check`` ids of the dev text.
Speed figures need a quiet machine (check ``uptime`` first); run nothing else beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--out", default="runs/bench_onnx_scales")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repetitions", type=int, default=7)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--check", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=0, help="export --max-length (0: the export's default)")
    args = ap.parse_args()

    from compress.data import check_ids
    from compress.logits import compare
    from compress.manifest import read_manifest
    from compress.models import load_model
    from export.onnx import OnnxConfig, export_onnx
    from export.onnx.validate import torch_logits
    from runtimes.onnx_runtime import OnnxDecoder, make_session

    out = Path(args.out)
    files = {}
    for kind in ("float32", "auto"):
        fields = {"scale_type": kind} | ({"max_length": args.max_length} if args.max_length else {})
        files[kind] = export_onnx(args.artifact, OnnxConfig(**fields), out / f"scales-{kind}")
    lm = load_model(args.artifact)
    ids = check_ids(lm.tokenizer, args.check)[: args.check]
    ref = torch_logits(lm.model, ids)
    del lm
    decoders = {k: OnnxDecoder(make_session(f, threads=args.threads), 4096) for k, f in files.items()}
    prefill_ids = [(i * 7919) % 1000 + 100 for i in range(args.prefill)]
    speed = {k: {"prefill": [], "decode": []} for k in files}
    load = os.getloadavg()[0]
    for _ in range(args.repetitions):
        for k, d in decoders.items():  # A, B, A, B ...: drift on the machine hits both
            t0 = time.perf_counter()
            d.logits(prefill_ids)
            t1 = time.perf_counter()
            d.generate([5, 6, 7, 8], args.new)
            t2 = time.perf_counter()
            speed[k]["prefill"].append(args.prefill / (t1 - t0))
            speed[k]["decode"].append(args.new / (t2 - t1))
    print(f"artifact {args.artifact}; {args.threads} threads; {args.repetitions} repetitions alternated; load at start "
          f"{load:.2f}, at end {os.getloadavg()[0]:.2f}\n")
    print("| scales | file MiB | float16 nodes | kept float32 | prefill tok/s [min-max] | decode tok/s [min-max] | "
          "KL vs PyTorch | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for k, f in files.items():
        r = read_manifest(f.parent).report
        c = compare(ref, decoders[k].logits(ids))
        cells = [f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]" for v in speed[k].values()]
        kept = ", ".join(f"{n} ({v:g})" for n, v in (r["scales"].get("float32_kept") or {}).items()) or "-"
        print(f"| {k} | {r['onnx_bytes'] / 2**20:.1f} | {r['scales'].get('float16_nodes', 0)} | {kept} | "
              f"{cells[0]} | {cells[1]} | {c.kl_mean:.5f} | {c.top1_agreement:.1%} |")
    a, b = (statistics.median(speed[k]["decode"]) for k in ("auto", "float32"))
    p, q = (statistics.median(speed[k]["prefill"]) for k in ("auto", "float32"))
    print(f"\nfloat16 / float32: decode {a / b:.3f}x, prefill {p / q:.3f}x (medians of this run)")


if __name__ == "__main__":
    main()
