"""Diagnostic (PyTorch, not a runtime result): what the embedding/output table's rounding costs a
quantized artifact, and what GPTQ fitted to the final hidden states buys over round-to-nearest.

    .venv/bin/python benchmarks/diag_table_rounding.py runs/default/quantize-mixed-gguf \
        --reference smollm2-135m --text shakespeare --tokens 4096

Loads the reference and the artifact (dequantized) and scores KL(reference || artifact) on the first
``--tokens`` tokens of ``--text`` in windows of 512, with the artifact's table as it is, put back to the
reference's (float), and re-rounded: RTN int8/int5 and GPTQ int5/int4 (groups of 32, symmetric), the
GPTQ Hessian from the artifact's own final-norm outputs on 32 x 256 tokens of the calibration text.
Tied tables only (the table is also the output projection).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runtime_quality import resolve_text  # noqa: E402

from compress.data import load_text, tokenize_text  # noqa: E402
from compress.logits import log_probs, mean_kl  # noqa: E402
from compress.models import load_model  # noqa: E402
from compress.quantize.calibrate import calibration_ids  # noqa: E402
from compress.quantize.gptq import gptq  # noqa: E402
from compress.quantize.grid import Grid, rtn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--reference", default="smollm2-135m")
    ap.add_argument("--text", default="shakespeare")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ref_lm = load_model(a.reference)
    ref, tok = ref_lm.model, ref_lm.tokenizer
    q = load_model(a.artifact).model
    if q.get_output_embeddings().weight is not q.get_input_embeddings().weight:
        raise SystemExit(f"{a.artifact}: the table is not tied; this diagnostic covers tied tables only")
    ids = tokenize_text(tok, load_text(resolve_text(a.text)[1]).text)[:a.tokens]
    wins = [torch.tensor(ids[i:i + 512]) for i in range(0, len(ids) - 1, 512)]
    with torch.no_grad():
        refs = [log_probs(ref(w[None], use_cache=False).logits[0]) for w in wins]

    def kl() -> float:
        with torch.no_grad():
            return sum(mean_kl(r, q(w[None], use_cache=False).logits[0]) for r, w in zip(refs, wins)) / len(wins)

    emb_f = ref.get_input_embeddings().weight.detach().clone()
    table = q.get_input_embeddings().weight
    print(f"| table | KL on {len(ids)} tokens of {a.text} |\n|---|---|")
    print(f"| as in the artifact | {kl():.4f} |", flush=True)
    with torch.no_grad():
        table.copy_(emb_f)
        print(f"| float (the reference's) | {kl():.4f} |", flush=True)
        for bits in (8, 5):
            table.copy_(rtn(emb_f, Grid(bits, 32, True)).dequantize())
            print(f"| int{bits} RTN g32 | {kl():.4f} |", flush=True)
        cal = calibration_ids(tok, load_text("moby-dick-calib"), samples=32, seq_len=256)
        table.copy_(emb_f)
        d = emb_f.shape[1]
        h, n = torch.zeros(d, d), 0
        for s in range(0, cal.shape[0], 8):
            y = q.get_decoder()(cal[s:s + 8], use_cache=False).last_hidden_state.reshape(-1, d).float()
            h.addmm_(y.T, y)
            n += y.shape[0]
        for bits in (5, 4):
            t0 = time.perf_counter()
            qt, _ = gptq(emb_f, h / n, Grid(bits, 32, True), damp=0.01, clip=True, name="table")
            table.copy_(qt.dequantize())
            print(f"| int{bits} GPTQ g32 (final-norm Hessian) | {kl():.4f} ({time.perf_counter() - t0:.0f} s) |",
                  flush=True)


if __name__ == "__main__":
    main()
