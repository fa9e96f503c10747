"""The project's own CI gate: real exports of SmolLM2-135M benched and checked against a baseline.

    python benchmarks/gate.py --model smollm2-135m     # build, bench, check (exit 1 on a regression): make gate
    python benchmarks/gate.py --model smollm2-135m --update-baseline   # after an intended change: bench twice,
                                                       # write the baseline with tolerances from the runs' spread
    python benchmarks/gate.py                          # the seconds-long tiny-model pipeline (make gate-tiny)
    python benchmarks/gate.py --perturb 0.05           # a degraded quantizer run the gate must catch
    python benchmarks/gate.py --model smollm2-135m --corrupt blk.0.attn_v.weight   # a corrupted export: the
                                                       # gate fails and its diagnosis names that tensor

SmolLM2 pipeline (issue #15; a few minutes, no network beyond the bundled package): the bundled model ->
quantize int8 and int4 RTN on the grids both formats carry exactly (--target both) -> each exported to
GGUF (qtype auto) and ONNX (precision auto) -> ``compress bench`` accuracy only, on 512 tokens of the
bundled text and 40 multiple-choice examples -> ``compress check`` against
benchmarks/baselines/smollm2-pipeline.json, whose rows carry tolerances from the baseline's own spread
(harness/gate.py). On a failure the check names the layer or export tensor that carries the loss
(compress diagnose). Latency is not measured: shared CI machines are noisy. Everything runs on one thread
(benchmarks/gate-profile.yaml says why): about 2.5 minutes beside another job on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINES = {"smollm2-135m": ROOT / "benchmarks" / "baselines" / "smollm2-pipeline.json",
             "tiny": ROOT / "benchmarks" / "baselines" / "tiny-pipeline.json"}
GATE_PROFILE = ROOT / "benchmarks" / "gate-profile.yaml"  # one thread: see its comment
GATE_THREADS = 1
# onnxruntime's GroupQueryAttention needs head_dim % 16 == 0: 6 heads of 16 (hidden 96, 2 KV heads)
SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}


def build_tiny(work: Path, perturb: float = 0.0) -> tuple[Path, list[str]]:
    """The tiny reference and its four artifacts as LABEL=PATH specs. ``perturb`` adds Gaussian noise of
    that relative size to the reference's weights before quantizing (a degraded pipeline, same labels)."""
    from compress.quantize import QuantConfig, run_quantize
    from compress.tiny import save_perturbed, save_tiny
    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx

    ref = save_tiny(work / "reference", "llama", seed=0, **SHAPE)
    src = ref
    if perturb:
        src = save_perturbed(work / "perturbed", perturb, "llama", seed=0, **SHAPE)
    q4 = run_quantize(str(src), QuantConfig(scheme="int4-rtn", group_size=32, eval_tokens=0), work / "int4-rtn")
    q8 = run_quantize(str(src), QuantConfig(scheme="int8", eval_tokens=0), work / "int8")
    gguf = export_gguf(str(src), GGUFConfig(qtype="Q8_0"), work / "gguf-q8_0").parent
    onnx = export_onnx(str(q4), OnnxConfig(precision="int4", max_length=512), work / "onnx-int4").parent
    return ref, [f"int4-rtn={q4}", f"int8={q8}", f"gguf-q8_0={gguf}", f"onnx-int4={onnx}"]


def build_smollm2(work: Path, perturb: float = 0.0) -> tuple[Path, list[str]]:
    """SmolLM2-135M, int8 and int4 in both formats, as LABEL=PATH specs (the reference is the fetched folder)."""
    from compress.fetch import ensure_fetched
    from compress.quantize import QuantConfig, run_quantize
    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx

    ref = ensure_fetched("smollm2-135m")
    src = ref
    if perturb:
        src = _perturbed_copy(ref, work / "perturbed", perturb)
    specs = []
    for scheme in ("int8", "int4-rtn"):
        q = run_quantize(str(src), QuantConfig(scheme=scheme, target="both", eval_tokens=0), work / scheme)
        name = scheme.split("-")[0]
        g = export_gguf(str(q), GGUFConfig(check_tokens=64, threads=GATE_THREADS), work / f"{name}-gguf").parent
        o = export_onnx(str(q), OnnxConfig(check_tokens=32, max_length=1024), work / f"{name}-onnx").parent
        specs += [f"{name}-gguf={g}", f"{name}-onnx={o}"]
    return ref, specs


def corrupt_gguf_tensor(export_dir: Path, gguf_name: str, seed: int = 0) -> None:
    """Overwrite the integer bytes of ``gguf_name``'s Q4_0/Q8_0 blocks (scales kept) in place: an export
    whose file no longer holds what its artifact does."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q, GGUFReader

    from runtimes.llama_cpp_runtime import gguf_path

    reader = GGUFReader(gguf_path(export_dir), "r+")
    t = next((x for x in reader.tensors if x.name == gguf_name), None)
    if t is None:
        raise SystemExit(f"--corrupt: {export_dir} has no tensor {gguf_name!r}")
    block = {Q.Q4_0: 18, Q.Q8_0: 34}.get(t.tensor_type)
    if block is None:
        raise SystemExit(f"--corrupt: {gguf_name} is {t.tensor_type.name}; only Q4_0 and Q8_0 blocks are corrupted")
    blocks = t.data.reshape(-1, block)
    blocks[:, 2:] = np.random.default_rng(seed).integers(0, 256, size=blocks[:, 2:].shape, dtype=np.uint8)
    reader.data.flush()


def _perturbed_copy(ref: Path, out: Path, rel: float) -> Path:
    import torch

    from compress.models import load_model

    lm = load_model(str(ref))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * rel)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def bench_config(reference: Path, model: str):
    from compress.harness import BenchConfig

    if model == "tiny":
        # small on purpose: well under a minute, still enough tokens for a 1% perplexity gate
        return BenchConfig(reference=str(reference), data="moby-dick", max_tokens=1024, window=128,
                           tasks=("sports_understanding",), mc_limit=40, prompt_tokens=32, new_tokens=32,
                           warmup=1, repetitions=2, profile="laptop")
    return BenchConfig(reference=str(reference), data="moby-dick", max_tokens=512, window=256,
                       tasks=("sports_understanding",), mc_limit=40, latency=False, roofline=False,
                       profile=str(GATE_PROFILE))


def run_gate(work: Path, *, model: str = "smollm2-135m", perturb: float = 0.0, runs: int = 1,
             corrupt: str | None = None) -> list[Path]:
    """Build the artifacts once and bench them ``runs`` times (the baseline's spread). ``corrupt`` names a
    tensor of the GGUF export (int4's for SmolLM2) to overwrite before benching."""
    from compress.harness import bench

    ref, arts = (build_tiny if model == "tiny" else build_smollm2)(work, perturb)
    if corrupt:
        gguf = next(Path(a.split("=", 1)[1]) for a in arts if a.startswith(("int4-gguf=", "gguf-")))
        corrupt_gguf_tensor(gguf, corrupt)
    cfg = bench_config(ref, model)
    return [bench(cfg, arts, work / f"run{i}") for i in range(runs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(BASELINES), default="tiny", help="make gate: smollm2-135m")
    ap.add_argument("--update-baseline", action="store_true")
    ap.add_argument("--perturb", type=float, default=0.0, help="Noise on the reference's weights, then quantize.")
    ap.add_argument("--corrupt", metavar="GGUF_TENSOR", help="Overwrite this GGUF export tensor before benching.")
    ap.add_argument("--baseline", type=Path, help="Baseline file (default: the model's, benchmarks/baselines/).")
    ap.add_argument("--keep", type=Path, help="Work directory to keep (default: a temporary one).")
    args = ap.parse_args(argv)
    os.environ.setdefault("COMPRESS_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2 if args.model == "tiny" else GATE_THREADS)
    from compress.cli import main as cli

    baseline = str(args.baseline or BASELINES[args.model])
    with tempfile.TemporaryDirectory(prefix="compress-gate-") as tmp:
        work = args.keep or Path(tmp)
        if args.model == "tiny":  # the tiny pipeline never touches the real model cache
            os.environ.setdefault("COMPRESS_CACHE", str(work / "cache"))
        if args.update_baseline and (args.perturb or args.corrupt):
            raise SystemExit("--update-baseline writes the standard: not from a degraded run (--perturb, --corrupt)")
        runs = run_gate(work, model=args.model, perturb=args.perturb, runs=2 if args.update_baseline else 1,
                        corrupt=args.corrupt)
        cli(["report", str(runs[0])])
        if args.update_baseline:
            spread = [a for r in runs[1:] for a in ("--spread-run", str(r))]
            return cli(["check", str(runs[0]), "--baseline", baseline, "--update-baseline", *spread])
        return cli(["check", str(runs[0]), "--baseline", baseline])


if __name__ == "__main__":
    sys.exit(main())
