"""Foundation benchmark (issue #2): cached load time, text-eval time for 8k tokens, peak RSS.

    .venv/bin/python benchmarks/bench_eval.py --model smollm2-135m --tokens 8192

Each measurement runs in a fresh subprocess so that peak RSS is that process's own. Prints a
Markdown table row per model, ready for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from compress.models import load_model
from compress.evaluate import EvalConfig, score_windows
from compress.data import load_text, text_windows, tokenize_text, uses_bos
from runtimes.torch_runtime import TorchRuntime
import torch
torch.set_num_threads(int(sys.argv[3]))
t_import = time.perf_counter() - t0
t1 = time.perf_counter()
lm = load_model(sys.argv[1])
t_load = time.perf_counter() - t1
tok = lm.tokenizer
ids = tokenize_text(tok, load_text("moby-dick").text, int(sys.argv[2]))
bos = tok.bos_token_id if uses_bos(tok) else None
windows = text_windows(ids, window=512, stride=512, bos_id=bos)
t2 = time.perf_counter()
scores = score_windows(TorchRuntime().use(lm), windows)
t_eval = time.perf_counter() - t2
print(json.dumps({"import_s": t_import, "load_s": t_load, "eval_s": t_eval, "tokens": scores["tokens"],
                  "perplexity": scores["perplexity"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(model: str, tokens: int, threads: int) -> dict:
    env = dict(os.environ, COMPRESS_PROGRESS="0")
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(tokens), str(threads)], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="bundled name, folder or GGUF (repeatable)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per model; the median is reported")
    args = ap.parse_args()
    print("| model | tokens | perplexity | cached load (s) | eval (s) | tokens/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for model in args.model or ["smollm2-135m"]:
        runs = sorted((measure(model, args.tokens, args.threads) for _ in range(args.repeats)),
                      key=lambda r: r["eval_s"])
        mid = runs[len(runs) // 2]
        loads = sorted(r["load_s"] for r in runs)
        print(f"| {model} | {mid['tokens']} | {mid['perplexity']:.3f} | {loads[len(loads) // 2]:.2f} "
              f"(min {loads[0]:.2f}) | {mid['eval_s']:.1f} (min {runs[0]['eval_s']:.1f}) | "
              f"{mid['tokens'] / mid['eval_s']:.0f} | {max(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
