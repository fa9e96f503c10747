"""Pruning + distillation benchmark (issue #6): SmolLM2-135M -> 20 of 30 layers (depth) and a
width-pruned student of similar size, each distilled for a bounded time, then quantized and exported.

    flock /tmp/compress-heavy.lock .venv/bin/python benchmarks/bench_prune_distill.py prepare
    flock /tmp/compress-heavy.lock .venv/bin/python benchmarks/bench_prune_distill.py train --student depth --minutes 14
    flock /tmp/compress-heavy.lock .venv/bin/python benchmarks/bench_prune_distill.py train --student depth --minutes 14
    flock /tmp/compress-heavy.lock .venv/bin/python benchmarks/bench_prune_distill.py finish --student depth
    .venv/bin/python benchmarks/bench_prune_distill.py table

Every step is a ``compress`` command run in a subprocess; the exact command, its wall time and the
1-minute load average around it are recorded in WORK/results.json. Perplexities come from
``compress eval`` on the same held-out tokens (moby-dick eval split, 8192 tokens, windows of 512),
so teacher, pruned and distilled numbers are comparable. ``train`` runs one chunk: distillation with
``--stop-after`` (a clean checkpoint-and-exit), or with ``--kill-after`` a SIGKILL mid-run; the next
chunk continues with ``--resume``. recovery = (before - after) / (before - teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = [str(ROOT / ".venv" / "bin" / "compress")]
WORK = Path(os.environ.get("COMPRESS_BENCH_WORK", Path.home() / ".cache/compress/bench/prune-distill"))
TEACHER = "smollm2-135m"
STUDENTS = {"depth": ["--method", "depth", "--target", "20"],
            "width": ["--method", "width", "--target", "ffn=1024,heads=6,kv_heads=2"]}
EVAL = ["--tasks", "", "--max-tokens", "8192", "--threads", "2", "--json"]
KD = ["--seq-len", "256", "--batch", "4", "--lr", "3e-4", "--warmup", "10", "--temperature", "1",
      "--checkpoint-every", "10", "--eval-every", "40", "--eval-tokens", "2048", "--threads", "2"]


def load() -> dict:
    f = WORK / "results.json"
    return json.loads(f.read_text()) if f.is_file() else {"commands": [], "students": {}}


def save(res: dict) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = WORK / "results.json.partial"
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, WORK / "results.json")


def run(res: dict, args: list[str], *, log: Path | None = None, ok=(0,), kill_after: float | None = None) -> tuple[int, str]:
    """Run a compress command, record it; returns (exit code, stdout)."""
    cmd = CLI + [str(a) for a in args]
    shown = "compress " + " ".join(shlex.quote(str(a)) for a in args)
    print(f"$ {shown}", flush=True)
    load0, t0 = os.getloadavg()[0], time.time()
    env = {**os.environ, "COMPRESS_PROGRESS": "0"}
    with open(log or os.devnull, "a") as err:
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=kill_after)
            rc, out = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:  # subprocess.run kills the child (SIGKILL) on timeout
            rc, out = -9, e.stdout or ""
    wall = time.time() - t0
    res["commands"].append({"command": shown, "rc": rc, "wall_s": round(wall, 1), "load_before": round(load0, 2),
                            "load_after": round(os.getloadavg()[0], 2), "at": time.strftime("%H:%M:%S")})
    save(res)
    if rc not in ok:
        raise SystemExit(f"command failed (rc {rc}): {shown}\n{out[-2000:]}")
    return rc, out


def perplexity(res: dict, model: str | Path) -> float:
    _, out = run(res, ["eval", str(model), *EVAL])
    return json.loads(out)["result"]["perplexity"]


def measure_teacher_cache(res: dict) -> None:
    """Teacher forward for one batch vs writing + reading its fp16 logits (what a cache would cost)."""
    import torch

    from compress.models import load_model

    torch.set_num_threads(2)
    lm = load_model(TEACHER)
    ids = torch.randint(0, 49152, (4, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lm.model(ids[:1, :32])
        t0 = time.perf_counter()
        logits = lm.model(ids, use_cache=False).logits
        fwd = time.perf_counter() - t0
    path = WORK / "logits-probe.pt"
    t0 = time.perf_counter()
    torch.save(logits.half(), path)
    os.sync()
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.load(path).float()
    read = time.perf_counter() - t0
    res["teacher_cache_probe"] = {"batch": "4 x 256", "teacher_forward_s": round(fwd, 3),
                                  "fp16_logits_bytes": path.stat().st_size, "write_s": round(write, 3),
                                  "read_s": round(read, 3)}
    path.unlink()
    save(res)


def prepare(args) -> None:
    res = load()
    res["teacher_ppl"] = perplexity(res, TEACHER)
    for name, opts in STUDENTS.items():
        out = WORK / name
        if not (out / "manifest.json").is_file():
            _, text = run(res, ["prune", TEACHER, *opts, "--out", out, "--json"])
            rep = json.loads(text)
        else:
            rep = json.loads((out / "manifest.json").read_text())["report"]
        st = res["students"].setdefault(name, {})
        st.update(prune_report={k: rep[k] for k in ("params_before", "params_after", "params_ratio", "seconds")
                                if k in rep}, before_ppl=perplexity(res, out))
        for k in ("layers_dropped", "layers_kept", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            if k in rep:
                st["prune_report"][k] = rep[k]
    measure_teacher_cache(res)
    # a 4-step probe of the real training step sets how many steps fit in the time budget
    probe = WORK / "probe-kd"
    run(res, ["distill", "--teacher", TEACHER, "--student", WORK / "depth", "--steps", "4", *KD, "--eval-tokens", "0",
              "--out", probe, "--force"])
    rep = json.loads((probe / "manifest.json").read_text())["report"]
    step_s = (rep["seconds"]["teacher"] + rep["seconds"]["student"]) / rep["steps"]
    res["probe"] = {"step_s": round(step_s, 2), "tokens_per_s": rep["tokens_per_s"],
                    "teacher_share_of_step": rep["teacher_share_of_step"]}
    res["budget_minutes"] = args.budget
    res["recommended_steps"] = int(args.budget * 60 * 0.9 / step_s)  # 10% for evaluations and checkpoints
    save(res)


def train(args) -> None:
    res = load()
    st = res["students"][args.student]
    out = WORK / f"{args.student}-kd"
    steps = st.setdefault("steps", args.steps or res["recommended_steps"])
    ckdir = WORK / f"{args.student}-kd.checkpoints"
    resume = ckdir.is_dir() and any(ckdir.glob("step-*"))
    cmd = ["-v", "distill", "--teacher", TEACHER, "--student", WORK / args.student, "--steps", str(steps), *KD,
           "--out", out]
    if resume:
        cmd.append("--resume")
    if args.kill_after is None:
        cmd += ["--stop-after", str(args.minutes)]
    rc, _ = run(res, cmd, log=WORK / f"{args.student}-kd.log", ok=(0, 3, -9),
                kill_after=args.kill_after * 60 if args.kill_after else None)
    st.setdefault("chunks", []).append({"rc": rc, "resume": resume, "command": res["commands"][-1]["command"],
                                        "wall_s": res["commands"][-1]["wall_s"]})
    save(res)
    if rc == 0:
        score_student(res, args.student)


def score_student(res: dict, name: str) -> None:
    """After-distillation perplexity (same tokens as teacher and pruned) and recovery."""
    st = res["students"][name]
    kd = WORK / f"{name}-kd"
    rep = json.loads((kd / "manifest.json").read_text())["report"]
    st["distill_report"] = {k: rep[k] for k in ("steps", "tokens_seen", "epochs", "tokens_per_s", "seconds",
                                                "teacher_share_of_step", "resumed_at", "eval", "params")}
    st["after_ppl"] = perplexity(res, kd)
    b, a, t = st["before_ppl"], st["after_ppl"], res["teacher_ppl"]
    st["recovery"] = (b - a) / (b - t)
    save(res)


def finish(args) -> None:
    res = load()
    st = res["students"][args.student]
    kd = WORK / f"{args.student}-kd"
    if "after_ppl" not in st:
        score_student(res, args.student)
    q = WORK / f"{args.student}-kd-int4"
    if not (q / "manifest.json").is_file():
        run(res, ["quantize", kd, "--scheme", "int4-gptq", "--group-size", "32", "--samples", "16", "--seq-len", "256",
                  "--eval-tokens", "0", "--out", q])
    st["int4_ppl"] = perplexity(res, q)
    for fmt, extra in (("gguf", ["--qtype", "Q4_0"]), ("onnx", ["--qtype", "int4", "--accuracy-level", "4"])):
        o = WORK / f"{args.student}-kd-int4-{fmt}"
        if not (o / "manifest.json").is_file():
            run(res, ["export", q, "--format", fmt, *extra, "--out", o])
        st[f"{fmt}_bytes"] = sum(f.stat().st_size for f in o.iterdir() if f.suffix in (".gguf", ".onnx", ".data"))
        st[f"{fmt}_dir"] = str(o)
    save(res)
    # decode speed and size in the #5 harness (latency only: accuracy is the perplexity above)
    cfg = WORK / "bench-latency.yaml"
    cfg.write_text("type: bench\ninclude_reference: false\naccuracy: false\nroofline: false\ntasks: []\n")
    teacher_q4 = WORK / "teacher-Q4_0"  # the unpruned model in the same format, timed in the same run
    if not (teacher_q4 / "manifest.json").is_file():
        run(res, ["export", TEACHER, "--format", "gguf", "--qtype", "Q4_0", "--out", teacher_q4])
    run_dir = WORK / f"{args.student}-bench"
    if not (run_dir / "manifest.json").is_file():
        run(res, ["bench", f"{args.student}-Q4_0={st['gguf_dir']}", f"{args.student}-onnx-int4={st['onnx_dir']}",
                  f"teacher-Q4_0={teacher_q4}", "--config", cfg, "--out", run_dir])
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines() if line.strip()]
    st["bench"] = [{k: r.get(k) for k in ("label", "runtime", "threads", "file_mb", "decode_tok_s", "decode_tok_s_min",
                                          "decode_tok_s_max", "ttft_s", "peak_rss_mb")} for r in rows]
    save(res)


def table(args) -> None:
    """Markdown for benchmarks/RESULTS.md from WORK/results.json."""
    res = load()
    t = res.get("teacher_ppl")
    print(f"Teacher {TEACHER}: perplexity {t:.3f} (8192 tokens of moby-dick, windows of 512).\n")
    print("| student | params | before | after | recovery | steps x tokens | distill time | resumed at | int4 ppl "
          "| GGUF Q4_0 | ONNX int4 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, st in res["students"].items():
        pr, dr = st.get("prune_report", {}), st.get("distill_report", {})
        rec = st.get("recovery")
        secs = dr.get("seconds", {})
        minutes = sum(secs.values()) / 60 if secs else None
        print(f"| {name} | {pr.get('params_after', 0) / 1e6:.1f} M ({pr.get('params_ratio', 0):.0%}) "
              f"| {st.get('before_ppl', float('nan')):.2f} | {st.get('after_ppl', float('nan')):.2f} "
              f"| {'' if rec is None else f'{rec:.1%}'} | {dr.get('steps', '')} x {4 * 256} "
              f"| {'' if minutes is None else f'{minutes:.1f} min'} | {dr.get('resumed_at', '')} "
              f"| {st.get('int4_ppl', float('nan')):.2f} | {st.get('gguf_bytes', 0) / 1e6:.1f} MB "
              f"| {st.get('onnx_bytes', 0) / 1e6:.1f} MB |")
    print("\nCommands (in order; wall time, 1-minute load average before -> after):\n")
    for c in res["commands"]:
        print(f"- `{c['command']}` (rc {c['rc']}, {c['wall_s']:.0f} s, load {c['load_before']} -> {c['load_after']}, "
              f"{c['at']} UTC)")
    for name, st in res["students"].items():
        for b in st.get("bench", []):
            print(f"\n{b['label']} ({b['runtime']}, {b['threads']} threads): {b['file_mb']:.1f} MB, decode "
                  f"{b['decode_tok_s']:.1f} tok/s ({b['decode_tok_s_min']:.1f}..{b['decode_tok_s_max']:.1f}), "
                  f"TTFT {b['ttft_s']:.3f} s, peak RSS {b['peak_rss_mb']:.0f} MB")
    for key in ("teacher_cache_probe", "probe"):
        if key in res:
            print(f"\n{key}: {json.dumps(res[key])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["prepare", "train", "finish", "table"])
    ap.add_argument("--student", choices=list(STUDENTS))
    ap.add_argument("--steps", type=int, default=None,
                    help="Distillation steps (fixed at the first chunk; default: what fits in --budget).")
    ap.add_argument("--budget", type=float, default=20.0, help="prepare: distillation minutes per student.")
    ap.add_argument("--minutes", type=float, default=14.0, help="Chunk length (--stop-after).")
    ap.add_argument("--kill-after", type=float, default=None, help="SIGKILL the chunk after this many minutes.")
    args = ap.parse_args()
    if args.phase in ("train", "finish") and not args.student:
        ap.error("--student is required")
    {"prepare": prepare, "train": train, "finish": finish, "table": table}[
        args.phase](args)


if __name__ == "__main__":
    main()
