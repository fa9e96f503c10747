"""ONNX export benchmark: size, export time, validation figures and decode speed per precision, with
llama.cpp Q4_0 of the same model on the same token ids and threads for comparison.

    python benchmarks/bench_export_onnx.py --model smollm2-135m \\
        --export fp32=smollm2-135m --export int8=smollm2-135m --export int4=out/smollm2-int4-rtn-g32
    python benchmarks/bench_export_onnx.py --model gemma3-270m --export fp32=gemma3-270m --reps 2

Each ``--export PRECISION=ARTIFACT[,FIELD=VALUE...]`` exports ARTIFACT at PRECISION (with those extra
OnnxConfig fields, e.g. ``lm_head=int4`` or ``accuracy_level=0``) into ``--work`` (an identical earlier
export is reused), then times greedy decoding of ``--tokens`` new tokens after a fixed prompt with our
KV-cache loop (runtimes/onnx_runtime.py). llama.cpp runs the bundled GGUF requantized to Q4_0
(``llama_model_quantize`` with ``allow_requantize``). Runs alternate between onnxruntime and llama.cpp,
so a busy machine slows both alike; the 1-minute load average is recorded with every row. The table
goes into benchmarks/RESULTS.md between this script's markers (``--no-write`` to only print it).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- bench_export_onnx:{model}:begin -->", "<!-- bench_export_onnx:{model}:end -->"
OUTER_BEGIN, OUTER_END = "<!-- bench_export_onnx:begin -->", "<!-- bench_export_onnx:end -->"
PROMPT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
          "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light")


def parse_fields(items: list[str]) -> dict:
    out = {}
    for kv in items:
        k, v = kv.split("=", 1)
        try:
            out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            out[k] = v
    return out


def describe(artifact: str) -> str:
    """A quantize artifact by its scheme (the path alone says nothing once it is gone)."""
    from compress.manifest import MANIFEST, read_manifest

    p = Path(artifact)
    if (p / MANIFEST).is_file():
        m = read_manifest(p, check_files=False)
        if m.stage == "quantize":
            c = m.config
            calib = (f" (samples {c.get('samples')}, seq {c.get('seq_len')})"
                     if str(c.get("scheme", "")).endswith(("gptq", "awq")) else "")
            return f"quantize {c.get('scheme')} g{c.get('group_size')}{calib}"
    return artifact


def export(model: str, label: str, precision: str, artifact: str, work: Path, extra: dict) -> Path:
    from export.onnx import OnnxConfig, export_onnx

    out = work / f"{model}-onnx-{label.replace(' ', '-').replace('=', '')}" / "export"
    cfg = OnnxConfig(precision=precision, check_tokens=128, **extra)
    return export_onnx(artifact, cfg, out).parent


def llama_cpp_q4_0(model: str, work: Path) -> Path:
    import llama_cpp

    from compress.bundled import bundled_gguf

    dst = work / f"{model}-Q4_0.gguf"
    if not dst.exists():
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        p.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(str(bundled_gguf(model)).encode(), str(dst).encode(), ctypes.byref(p))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed ({rc})")
    return dst


class LlamaCpp:
    def __init__(self, path: Path, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         verbose=False)

    def generate(self, ids: list[int], n: int) -> tuple[float, float, list[int]]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
        t1 = time.perf_counter()
        new = [nxt]
        while len(new) < n:
            llm.eval([nxt])
            nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            new.append(nxt)
        t2 = time.perf_counter()
        return (n - 1) / (t2 - t1), t1 - t0, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="bundled model name (for llama.cpp's GGUF and the table)")
    ap.add_argument("--export", action="append", default=[], help="PRECISION=ARTIFACT[,FIELD=VALUE...], repeatable")
    ap.add_argument("--option", action="append", default=[], help="extra OnnxConfig field NAME=VALUE for every export")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_export_onnx")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", help="RESULTS.md section name (default: the model); one per invocation")
    args = ap.parse_args()

    from compress.manifest import read_manifest
    from runtimes import DeviceProfile
    from runtimes.onnx_runtime import OnnxRuntime

    extra = parse_fields(args.option)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    exports = []
    for spec in args.export:
        precision, rest = spec.split("=", 1)
        artifact, *fields = rest.split(",")
        label = " ".join([precision] + fields)
        t0 = time.perf_counter()
        folder = export(args.model, label, precision, artifact, args.work, {**extra, **parse_fields(fields)})
        exports.append((label, artifact, folder, time.perf_counter() - t0))
    llama = None
    if not args.no_llama_cpp:
        llama = LlamaCpp(llama_cpp_q4_0(args.model, args.work), args.threads)
    profile = DeviceProfile(threads=args.threads)
    speeds: dict[str, list[float]] = {"llama.cpp Q4_0": []}
    ttfts: dict[str, list[float]] = {"llama.cpp Q4_0": []}
    runtimes = {}
    ids = None
    for precision, artifact, folder, _ in exports:
        rt = OnnxRuntime()
        rt.load(folder, profile)
        runtimes[precision] = rt
        ids = ids or rt.tokenizer(PROMPT)["input_ids"]
        rt.generate(ids, 8)  # warm-up
        speeds[precision], ttfts[precision] = [], []
    if llama:
        llama.generate(ids, 8)
    for _ in range(args.reps):  # alternate, so that a busy machine slows every runtime alike
        for precision, rt in runtimes.items():
            g = rt.generate(ids, args.tokens)
            speeds[precision].append(g.decode_tokens_per_s)
            ttfts[precision].append(g.time_to_first_token_s)
        if llama:
            tps, ttft, _ = llama.generate(ids, args.tokens)
            speeds["llama.cpp Q4_0"].append(tps)
            ttfts["llama.cpp Q4_0"].append(ttft)
    load = os.getloadavg()[0]
    ref = statistics.median(speeds["llama.cpp Q4_0"]) if llama else None
    best_ref = max(speeds["llama.cpp Q4_0"]) if llama else None
    for precision, artifact, folder, wall in exports:
        m = read_manifest(folder)
        r = m.report
        v = r["validation"]
        tps = statistics.median(speeds[precision])
        rows.append({
            "precision": precision, "artifact": describe(artifact), "integers": r["plan"]["integers"],
            "lm_head": r["plan"]["lm_head"], "size_mb": r["onnx_bytes"] / 1e6,
            "export_s": m.wall_time_s, "top1_prefill": v["prefill"]["top1_agreement"],
            "top1_kv": v["kv_cache"]["top1_agreement"], "kl": v["prefill"]["kl"], "max_abs": v["prefill"]["max_abs"],
            "decode_tps": tps, "spread": (min(speeds[precision]), max(speeds[precision])),
            "ttft_ms": 1000 * statistics.median(ttfts[precision]), "vs_q4_0": tps / ref if ref else None,
            "best_vs_q4_0": max(speeds[precision]) / best_ref if ref else None})
    table = render(args, rows, speeds, ttfts, ref, load, len(ids))
    print(table)
    if not args.no_write:
        write_section(args.section or args.model, table)


def render(args, rows, speeds, ttfts, ref, load, n_prompt) -> str:
    import onnxruntime

    title = f"{args.model}: ONNX export" + (f" ({args.section})" if args.section else "")
    lines = [f"### {title} (onnxruntime {onnxruntime.__version__}, {args.threads} threads)", "",
             f"Command: `python benchmarks/bench_export_onnx.py {shlex.join(sys.argv[1:])}`", "",
             f"Decode: greedy, {args.tokens} new tokens after a {n_prompt}-token prompt, median of {args.reps} "
             f"(min..max); 1-min load average at the end {load:.1f} on a shared 2-core machine, so absolute "
             "speeds are low and noisy; runs alternate between runtimes, and the best run of each (the least "
             "disturbed) gives the second ratio. Validation: onnxruntime vs the PyTorch "
             "model of the same artifact on 128 fixed tokens (prefill; KV cache = second half one token at a "
             "time).", "",
             "| precision | from | integers | lm_head | size MB | export s | top-1 prefill | top-1 KV | KL | "
             "max abs | decode tok/s | TTFT ms | vs llama.cpp Q4_0 (median; best) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = f"{r['vs_q4_0']:.2f}x; {r['best_vs_q4_0']:.2f}x" if r["vs_q4_0"] else "-"
        lines.append(f"| {r['precision']} | {r['artifact']} | {r['integers']} | {r['lm_head']} | {r['size_mb']:.1f} | "
                     f"{r['export_s']:.1f} | {r['top1_prefill']:.2%} | {r['top1_kv']:.2%} | {r['kl']:.2e} | "
                     f"{r['max_abs']:.3g} | {r['decode_tps']:.1f} ({r['spread'][0]:.1f}..{r['spread'][1]:.1f}) | "
                     f"{r['ttft_ms']:.0f} | {vs} |")
    if ref:
        s = speeds["llama.cpp Q4_0"]
        lines.append(f"| llama.cpp Q4_0 | bundled GGUF requantized | - | - | - | - | - | - | - | - | {ref:.1f} "
                     f"({min(s):.1f}..{max(s):.1f}) | {1000 * statistics.median(ttfts['llama.cpp Q4_0']):.0f} | 1.00x; 1.00x |")
    return "\n".join(lines) + "\n"


def write_section(name: str, table: str) -> None:
    """Put ``table`` into benchmarks/RESULTS.md as the block for ``name`` inside this script's own
    "Export to ONNX" section (created at the end of the file the first time), replacing an older block."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Results\n"
    begin, end = BEGIN.format(model=name), END.format(model=name)
    if begin in text and end in text:  # drop the old block wherever it is
        text = text[:text.index(begin)].rstrip("\n") + "\n\n" + text[text.index(end) + len(end):].lstrip("\n")
    if OUTER_END not in text:
        text = text.rstrip("\n") + f"\n\n## Export to ONNX (issue #4)\n\n{OUTER_BEGIN}\n{OUTER_END}\n"
    k = text.index(OUTER_END)
    text = text[:k] + f"{begin}\n{table}{end}\n\n" + text[k:]
    path.write_text(text)

if __name__ == "__main__":
    main()
