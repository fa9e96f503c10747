"""GGUF export benchmark (issue #4): size, export time and validation figures per artifact.

    .venv/bin/python benchmarks/bench_export_gguf.py --model smollm2-135m --qtype F16 --qtype Q8_0 \
        --qtype Q4_0 --qtype Q4_K_M --chat Q4_K_M --out runs/export-gguf
    .venv/bin/python benchmarks/bench_export_gguf.py --model gemma3-270m --qtype Q8_0 --qtype Q4_K_M \
        --out runs/export-gguf --write

Each export runs in a fresh subprocess (``compress export`` as a user would run it), so that the time is
the stage's own and peak RSS is that process's. The table comes from the artifacts' manifests. With
``--chat QTYPE`` the exported file answers "What is the capital of France?" through llama-cpp-python's
``create_chat_completion`` with the chat template stored in the file. ``--write`` puts the rows into
this benchmark's section of benchmarks/RESULTS.md (rows for the same artifact and type are replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- bench_export_gguf:begin -->", "<!-- bench_export_gguf:end -->"
HEADER = ("| artifact | GGUF | size (MB) | export (s) | write (s) | validate (s) | peak RSS (MB) | top-1 vs PyTorch "
          "| mean KL | max abs dlogit | ppl llama.cpp / PyTorch | KL vs file's own weights | tensors | command |")
QUESTION = "What is the capital of France?"

# runs `compress export ...` in this child and reports the child's own peak RSS
_EXPORT = r"""
import resource, sys
from compress.cli import main
rc = main(sys.argv[1:])
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
"""

_CHAT = r"""
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)
out = llm.create_chat_completion(messages=[{"role": "user", "content": sys.argv[2]}], max_tokens=48, temperature=0.0)
print(json.dumps({"reply": out["choices"][0]["message"]["content"]}))
"""


def run_export(model: str, qtype: str, out_root: Path) -> dict:
    out_dir = out_root / f"{Path(model).name}-{qtype}"
    cmd = ["compress", "export", model, "--format", "gguf", "--qtype", qtype, "--out", str(out_dir), "--force"]
    env = dict(os.environ, COMPRESS_PROGRESS="0")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _EXPORT] + cmd[1:], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    rss = int(re.findall(r"PEAK_RSS_KB (\d+)", proc.stderr)[-1]) / 1024
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return {"cmd": " ".join(cmd), "wall_s": wall, "rss_mb": rss, "manifest": manifest, "dir": out_dir}


def chat(gguf: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", _CHAT, str(gguf), QUESTION], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["reply"]


def row(model: str, res: dict) -> str:
    m = res["manifest"]
    r, v = m["report"], m["report"]["validation"]
    types = ", ".join(f"{k} {n}" for k, n in r["readback"]["types"].items())
    direct = r["plan"]["decisions"].get("direct")
    if direct:
        types += f" ({direct} direct)"
    if r.get("imatrix_tokens"):
        types += f"; imatrix {r['imatrix_tokens']} tokens"
    return (f"| {model} | {m['config']['qtype']} | {r['gguf_bytes'] / 1e6:.1f} | {res['wall_s']:.1f} | "
            f"{r['write_s']:.1f} | {r['validate_s']:.1f} | {res['rss_mb']:.0f} | {v['top1_agreement']:.2%} "
            f"(min {v['min_top1']:.1%}) | {v['kl_mean']:.2e} (max {v['max_kl']:.0e}) | {v['max_abs_logit_diff']:.3g} | "
            f"{v['llamacpp_perplexity']:.2f} / {v['torch_perplexity']:.2f} | "
            f"{v['file_weights_in_pytorch']['kl_mean']:.2e} | {types} | `{res['cmd']}` |")


def write_rows(rows: list[str], notes: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.is_file() else "# Results\n"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
    else:
        head, body, tail = text.rstrip() + "\n\n## Export to GGUF (issue #4)\n\n", "", "\n"
    old = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith(("| artifact", "|---"))]
    key = lambda ln: tuple(c.strip() for c in ln.split("|")[1:3])  # noqa: E731  (artifact, GGUF)
    merged = {key(ln): ln for ln in old}
    merged.update({key(ln): ln for ln in rows})
    old_notes = [ln for ln in body.splitlines() if ln.startswith("- ")]
    notes = list(dict.fromkeys(old_notes + [f"- {n}" for n in notes]))
    table = "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"] + list(merged.values()))
    new_body = f"\n{table}\n\n" + "\n".join(notes) + ("\n" if notes else "")
    RESULTS.write_text(head + BEGIN + new_body + END + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="artifact: bundled name or folder (repeatable)")
    ap.add_argument("--qtype", action="append", help="GGUF type (repeatable)")
    ap.add_argument("--chat", action="append", default=[], help="qtype whose file answers a chat question")
    ap.add_argument("--out", type=Path, default=Path("runs/export-gguf"))
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows, notes = [], []
    print(HEADER)
    for model in args.model or ["smollm2-135m"]:
        for qtype in args.qtype or ["F16", "Q8_0", "Q4_0", "Q4_K_M"]:
            res = run_export(model, qtype, args.out)
            rows.append(row(model, res))
            print(rows[-1], flush=True)
            notes += [f"{model} {qtype}: {n}" for n in res["manifest"]["report"]["notes"]]
            if qtype in args.chat:
                gguf = res["dir"] / res["manifest"]["report"]["gguf_file"]
                reply = re.sub(r"\s+", " ", chat(gguf)).strip()
                notes.append(f"{model} {qtype} chat, own template, greedy: \"{QUESTION}\" -> \"{reply}\"")
                print(notes[-1], flush=True)
    if args.write:
        write_rows(rows, notes)


if __name__ == "__main__":
    main()
