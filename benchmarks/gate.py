"""The project's own CI gate: a deterministic tiny-model pipeline benched and checked against a baseline.

    python benchmarks/gate.py                      # build, bench, check (exit 1 on a regression)
    python benchmarks/gate.py --update-baseline    # after an intended change: write the new baseline
    python benchmarks/gate.py --perturb 0.05       # the degraded run the gate must catch (tests use it)

Pipeline (seconds, no network): a tiny Llama built in-process with a fixed seed (tests/tiny.py) and
its tokenizer -> quantize int4 RTN (group 32, symmetric) and int8 -> export GGUF Q8_0 and ONNX int4 ->
``compress bench`` on a short slice of the bundled text -> ``compress check`` against
benchmarks/baselines/tiny-pipeline.json. Latency is measured but not gated (shared CI machines are
noisy); accuracy and sizes are.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "baselines" / "tiny-pipeline.json"
sys.path.insert(0, str(ROOT / "tests"))
# onnxruntime's GroupQueryAttention needs head_dim % 16 == 0: 6 heads of 16 (hidden 96, 2 KV heads)
SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}


def build_artifacts(work: Path, perturb: float = 0.0) -> list[str]:
    """The tiny reference and its four artifacts as LABEL=PATH specs. ``perturb`` adds Gaussian noise of
    that relative size to the reference's weights before quantizing (a degraded pipeline, same labels)."""
    from compress.quantize import QuantConfig, run_quantize
    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx
    from tiny import save_perturbed, save_tiny

    ref = save_tiny(work / "reference", "llama", seed=0, **SHAPE)
    src = ref
    if perturb:
        src = save_perturbed(work / "perturbed", perturb, "llama", seed=0, **SHAPE)
    q4 = run_quantize(str(src), QuantConfig(scheme="int4-rtn", group_size=32, eval_tokens=0), work / "int4-rtn")
    q8 = run_quantize(str(src), QuantConfig(scheme="int8", eval_tokens=0), work / "int8")
    gguf = export_gguf(str(src), GGUFConfig(qtype="Q8_0"), work / "gguf-q8_0").parent
    onnx = export_onnx(str(q4), OnnxConfig(precision="int4", max_length=512), work / "onnx-int4").parent
    return [f"int4-rtn={q4}", f"int8={q8}", f"gguf-q8_0={gguf}", f"onnx-int4={onnx}"]


def bench_config(reference: Path):
    from compress.harness import BenchConfig

    # small on purpose: well under a minute, still enough tokens for a 1% perplexity gate
    return BenchConfig(reference=str(reference), data="moby-dick", max_tokens=1024, window=128,
                       tasks=("sports_understanding",), mc_limit=40, prompt_tokens=32, new_tokens=32,
                       warmup=1, repetitions=2, profile="laptop")


def run_gate(work: Path, *, perturb: float = 0.0) -> Path:
    from compress.harness import bench

    arts = build_artifacts(work, perturb)
    return bench(bench_config(work / "reference"), arts, work / "run")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update-baseline", action="store_true")
    ap.add_argument("--perturb", type=float, default=0.0)
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--keep", type=Path, help="Work directory to keep (default: a temporary one).")
    args = ap.parse_args(argv)
    os.environ.setdefault("COMPRESS_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2)
    from compress.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="compress-gate-") as tmp:
        work = args.keep or Path(tmp)
        os.environ.setdefault("COMPRESS_CACHE", str(work / "cache"))
        run = run_gate(work, perturb=args.perturb)
        cli(["report", str(run)])
        if args.update_baseline:
            return cli(["check", str(run), "--baseline", str(args.baseline), "--update-baseline"])
        return cli(["check", str(run), "--baseline", str(args.baseline)])


if __name__ == "__main__":
    sys.exit(main())
