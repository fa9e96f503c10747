"""Quantization benchmark (issue #3): our schemes against llama.cpp's own quants, same tokens.

    .venv/bin/python benchmarks/bench_quantize.py --model smollm2-135m --group 64 --samples 32
    .venv/bin/python benchmarks/bench_quantize.py --model gemma3-270m --group 128 --samples 32 --tokens 4096
    .venv/bin/python benchmarks/bench_quantize.py --model smollm2-135m --only "GPTQ g64" --table

Every row is scored on the same token ids of the held-out text (``moby-dick``, windows of 512, BOS
first where the model uses it): perplexity, its ratio to the fp32 PyTorch reference, KL(reference ||
row) and top-1 agreement, and optionally multiple-choice accuracy (``--mc-limit``). Our artifacts
are made by the CLI in a subprocess (so peak RSS is that run's own; the command is recorded) and
reloaded through compress.models (the path every user takes). llama.cpp's rows requantize the
bundled GGUF (its weights are exactly our fp32 reference) with ``llama_model_quantize`` and run in
llama.cpp. Results accumulate in ``WORK/results.json``, so rows can be (re)run one at a time;
``--table`` prints the Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMACPP = ("Q8_0", "Q4_0", "Q4_K_M")


@dataclasses.dataclass
class Row:
    label: str
    kind: str  # "ref" | "ours" | "artifact" | "llamacpp"
    args: tuple[str, ...] = ()  # CLI options for ours, the llama.cpp type for llamacpp
    grid: str = ""  # relation to the reference's own block grid


def rows(model: str, group: int, samples: int, seq_len: int, extra: list[str], artifacts: list[str]) -> list[Row]:
    ref_grid = "Q4_1 (32)" if model.startswith("smollm2") else "Q4_K_M (32-wide sub-blocks)"
    calib = ("--samples", str(samples), "--seq-len", str(seq_len))
    out = [Row("reference fp32 (PyTorch)", "ref"), Row("reference GGUF in llama.cpp", "llamacpp", ("source",)),
           Row("int8 (per channel)", "ours", ("--scheme", "int8")),
           Row("w8a8 (per channel, dynamic int8 act.)", "ours", ("--scheme", "w8a8"))]
    for g in (group, 32):
        on = f"aligned with {ref_grid}" if g == 32 else "off-grid"
        for method, name in (("rtn", "RTN"), ("gptq", "GPTQ"), ("awq", "AWQ")):
            args = ("--scheme", f"int4-{method}", "--group-size", str(g)) + (calib if method != "rtn" else ())
            out.append(Row(f"int4 {name} g{g}", "ours", args, on))
    for spec in extra:  # "LABEL=--scheme int4-gptq --group-size 32 --embeddings int8 --lm-head int8"
        label, _, opts = spec.partition("=")
        args = tuple(shlex.split(opts))
        if (any(a.endswith(("gptq", "awq")) for a in args) or "--budget-bits" in args) and "--samples" not in args:
            args += calib
        out.append(Row(label, "ours", args, "see options"))
    for spec in artifacts:  # "LABEL=PATH": an artifact made earlier (e.g. the 128 x 512 GPTQ run)
        label, _, path = spec.partition("=")
        out.append(Row(label, "artifact", (path,), "see options"))
    for q in LLAMACPP:
        out.append(Row(f"llama.cpp {q}", "llamacpp", (q,), "aligned (32-blocks)" if q != "Q4_K_M" else
                       "k-quant (256 super-blocks)"))
    return out


class CachedReference:
    """The fp32 reference's logits per window, computed once and kept on disk (KL needs all of them)."""

    name = "reference"

    def __init__(self, runtime, windows, folder: Path):
        self.folder, self.index = folder, {}
        folder.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(windows):
            f = folder / f"w{i}.npy"
            if not f.is_file():
                np.save(f, runtime.logits(w.input_ids).astype(np.float32))
            self.index[tuple(w.input_ids)] = f

    def logits(self, token_ids, last=None):
        return np.load(self.index[tuple(token_ids)])


class LlamaCpp:
    """Just enough of the Runtime protocol to score a GGUF in llama.cpp on given token ids."""

    name = "llama.cpp"

    def __init__(self, path: Path, threads: int = 2):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=threads,
                         verbose=False)

    def logits(self, token_ids, last=None):
        self.llm.reset()
        self.llm.eval(list(token_ids))
        out = np.array(self.llm.scores[:len(token_ids)], dtype=np.float32)
        return out[-last:] if last else out


def llamacpp_file(src: Path, qtype: str, work: Path) -> Path:
    import llama_cpp

    dst = work / f"llamacpp-{qtype}.gguf"
    if not dst.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.allow_requantize = True  # the bundled file is Q4_1 / Q4_K_M: dequantized, then requantized
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
        params.nthread = 2
        tmp = dst.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize {qtype} failed")
        os.replace(tmp, dst)
    return dst


def gguf_bytes(path: Path) -> tuple[int, int]:
    """Tensor data bytes and weight count of a GGUF file."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in r.tensors), sum(int(t.n_elements) for t in r.tensors)


def quantize_ours(model: str, row: Row, work: Path) -> tuple[Path, str, dict]:
    out = work / hashlib.sha1(" ".join(row.args).encode()).hexdigest()[:10]
    cmd = [".venv/bin/python", "-m", "compress.cli", "quantize", model, *row.args, "--eval-tokens", "0",
           "--out", str(out), "--json"]
    shown = "compress quantize " + " ".join([model, *row.args, "--out", "OUT"])
    from compress.manifest import is_complete, read_manifest

    if is_complete(out):  # made by an earlier run of this script with the same options: reuse it
        m = read_manifest(out)
        return out, shown, dict(m.report, wall_s=m.wall_time_s)
    env = dict(os.environ, COMPRESS_PROGRESS="0")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{shown} failed: {proc.stderr.strip()[-500:]}")
    report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - t0
    return out, shown, report


def measure(model: str, row: Row, args, windows, ref, tokenizer, work: Path, prev: dict | None = None) -> dict:
    from compress.bundled import bundled_gguf
    from compress.evaluate import mc_accuracy, score_windows
    from compress.data import load_mc_task, TASKS
    from compress.models import load_model
    from runtimes.torch_runtime import TorchRuntime

    res: dict = {"label": row.label, "grid": row.grid}
    if row.kind == "llamacpp":
        src = bundled_gguf(model)
        path = src if row.args[0] == "source" else llamacpp_file(src, row.args[0], work)
        nbytes, n = gguf_bytes(path)
        res.update(size_mb=nbytes / 1e6, bpw=8 * nbytes / n, command=f"llama_model_quantize(bundled, {row.args[0]})"
                   if row.args[0] != "source" else "bundled GGUF as shipped")
        rt = LlamaCpp(path)
    else:
        if row.kind == "ref":
            lm = load_model(model)
            res.update(command=f"compress eval {model}")
            n = sum(p.numel() for p in lm.model.parameters())
            res.update(size_mb=4 * n / 1e6, bpw=32.0)
        else:
            if row.kind == "artifact":
                from compress.manifest import read_manifest

                out, m = Path(row.args[0]).expanduser(), read_manifest(Path(row.args[0]).expanduser())
                rep, shown = m.report, f"compress quantize {model} " + _options(m.config)
            else:
                out, shown, rep = quantize_ours(model, row, work)
            lm = load_model(out)
            res.update(command=shown, size_mb=rep["bytes_after_fp16_rest"] / 1e6,
                       bpw=8 * rep["bytes_after_fp16_rest"] / rep["params"], quant_s=rep["seconds"],
                       peak_rss_mb=rep.get("peak_rss_mb"), skipped=len(rep["skipped"]))
        rt = TorchRuntime().use(lm)
    if prev is not None and args.mc_only:
        res = dict(prev)  # text scores already measured: add multiple choice only
    else:
        s = score_windows(rt, windows, reference=ref)
        res.update(tokens=s["tokens"], perplexity=s["perplexity"], kl=s["kl"], top1=s["top1_agreement"])
    if args.mc_limit:
        mc = {t: mc_accuracy(rt, tokenizer, load_mc_task(t), limit=args.mc_limit)["accuracy"] for t in TASKS}
        res.update(mc=float(np.mean(list(mc.values()))), mc_tasks=mc, mc_limit=args.mc_limit)
    return res


def _options(config: dict) -> str:
    """The CLI options that differ from the defaults, for a config read from a manifest."""
    from compress.quantize import QuantConfig

    default = QuantConfig().to_dict()
    opts = [f"--scheme {config['scheme']}"]
    for k, v in config.items():
        if k in ("type", "version", "scheme") or default.get(k) == v:
            continue
        if k == "symmetric":
            opts.append("--asymmetric")
            continue
        flag = "--" + k.replace("_", "-")
        opts.append(flag if v is True else f"--no-{k.replace('_', '-')}" if v is False else f"{flag} {v}")
    return " ".join(opts) + " --out OUT"


def table(results: dict, ref_ppl: float) -> str:
    lines = ["| setting | grid | size (MB) | bits/weight | perplexity | ratio | KL | top-1 | MC | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        mc = f"{r['mc']:.1%}" if "mc" in r else "-"
        lines.append(f"| {r['label']} | {r['grid'] or '-'} | {r['size_mb']:.1f} | {r['bpw']:.2f} | "
                     f"{r['perplexity']:.3f} | {r['perplexity'] / ref_ppl:.4f} | {r['kl']:.4f} | {r['top1']:.1%} | "
                     f"{mc} | `{r['command']}` |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group", type=int, default=64, help="the off-grid group size (64 SmolLM2, 128 Gemma3)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=8192, help="held-out tokens scored")
    ap.add_argument("--mc-limit", type=int, default=0, help="examples per BIG-bench task (0 = no MC)")
    ap.add_argument("--mc-only", action="store_true", help="for rows already scored, add MC accuracy only")
    ap.add_argument("--only", action="append", help="run only rows whose label contains this (repeatable)")
    ap.add_argument("--extra", action="append", default=[], help="'LABEL=CLI options' for an extra row")
    ap.add_argument("--artifact", action="append", default=[], help="'LABEL=PATH' of an existing artifact to score")
    ap.add_argument("--work", type=Path, help="artifacts, reference logits, results.json")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of all results so far")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from compress.bundled import cache_root
    from compress.data import load_text, text_windows, tokenize_text, uses_bos
    from compress.models import load_model
    from runtimes.torch_runtime import TorchRuntime

    torch.set_num_threads(args.threads)
    work = args.work or cache_root() / "bench" / "quantize" / args.model
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    ref_lm = load_model(args.model)
    tok = ref_lm.tokenizer
    ids = tokenize_text(tok, load_text("moby-dick").text, args.tokens)
    bos = tok.bos_token_id if uses_bos(tok) else None
    windows = text_windows(ids, window=512, stride=512 - (bos is not None), bos_id=bos, source="moby-dick")
    ref = CachedReference(TorchRuntime().use(ref_lm), windows, work / f"ref-logits-{args.tokens}")
    del ref_lm
    todo = [r for r in rows(args.model, args.group, args.samples, args.seq_len, args.extra, args.artifact)
            if not args.only or any(o in r.label for o in args.only)]
    for row in todo:
        t0 = time.perf_counter()
        results[row.label] = measure(args.model, row, args, windows, ref, tok, work, results.get(row.label))
        results[row.label]["bench_s"] = round(time.perf_counter() - t0, 1)
        results_file.write_text(json.dumps(results, indent=1))
        r = results[row.label]
        print(f"{row.label}: ppl {r['perplexity']:.3f} KL {r['kl']:.4f} size {r['size_mb']:.1f} MB "
              f"({r['bench_s']:.0f} s)", flush=True)
    if args.table:
        ref_ppl = results["reference fp32 (PyTorch)"]["perplexity"]
        print(table(results, ref_ppl))


if __name__ == "__main__":
    main()
