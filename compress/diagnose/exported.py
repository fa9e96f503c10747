"""Attribution to the export: is the loss the quantizer's or the export's?

On the same token ids: the float reference, the source artifact in PyTorch (what the quantizer made)
and the exported file in its runtime (llama.cpp or onnxruntime). ``kl_quantizer`` = KL(reference ||
artifact in PyTorch); ``kl_export`` = KL(artifact in PyTorch || runtime) - what the export added. The
export is blamed when it adds at least half as much as quantization did (``EXPORT_SHARE``).

For a GGUF, every tensor of the file is also dequantized by gguf-py (export.gguf.validate's
load_gguf_weights, llama.cpp's conventions undone) and compared with the artifact's weight: relative
error ||file - artifact|| / ||artifact||. A tensor carried exactly must match (error below
``EXACT_TOL``); a re-rounded one is an outlier when its error is ``OUTLIER`` times the median of the
tensors of its type. The worst is named. ONNX: logits only (per-layer hidden states: not yet).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from ..evaluate import score_windows
from ..kinds import KINDS
from ..manifest import read_manifest

log = logging.getLogger(__name__)
EXPORT_SHARE = 0.5
EXACT_TOL = 1e-3
OUTLIER = 4.0


def export_source(folder: Path) -> tuple[str, Path] | None:
    """(stage, source artifact folder) when ``folder`` is an export of ours, else None."""
    if not (Path(folder) / "manifest.json").is_file():
        return None
    m = read_manifest(folder, check_files=False)
    if m.stage not in KINDS or not KINDS[m.stage].export_format:
        return None
    src = m.report.get("input")
    return m.stage, Path(src) if isinstance(src, str) else None


def compare_runtime(export_dir: Path, stage: str, art_runtime, reference, windows, threads: int) -> dict[str, Any]:
    """KL/top-1 of the runtime against the reference and against the artifact in PyTorch."""
    from runtimes import DeviceProfile, get_runtime

    rt = get_runtime(KINDS[stage].native)
    rt.load(export_dir, DeviceProfile(threads=threads))
    q = score_windows(art_runtime, windows, reference=reference)
    r = score_windows(rt, windows, reference=reference)
    x = score_windows(rt, windows, reference=art_runtime)
    kl_q, kl_x = q["kl"], x["kl"]
    blame = "export" if kl_x >= EXPORT_SHARE * kl_q and kl_x > 1e-6 else "quantizer"
    return {"runtime": rt.name, "kl_quantizer": kl_q, "kl_runtime": r["kl"], "kl_export": kl_x,
            "top1_export": x["top1_agreement"], "perplexity_artifact": q["perplexity"],
            "perplexity_runtime": r["perplexity"], "blame": blame,
            "measurement": "KL(reference || artifact in PyTorch) vs KL(artifact in PyTorch || runtime), same ids"}


@torch.no_grad()
def gguf_tensors(export_dir: Path, source: Path, model) -> dict[str, Any]:
    """Per-tensor relative error of the file's dequantized weights against the artifact's (``model``
    holds the artifact's weights; they are put back afterwards)."""
    from export.gguf.config import GGUFConfig
    from export.gguf.export import prepare
    from export.gguf.source import open_source
    from export.gguf.validate import load_gguf_weights
    from runtimes.llama_cpp_runtime import gguf_path

    man = read_manifest(export_dir)
    src = open_source(str(source))
    _, _, plan, _, _ = prepare(src, GGUFConfig.from_dict(man.config, where=str(export_dir / "manifest.json")))
    state = model.state_dict(keep_vars=True)
    names = [p.hf_name for p in plan if p.hf_name in state]
    saved = {n: state[n].detach().clone() for n in names}
    try:
        load_gguf_weights(model, gguf_path(export_dir), plan)
        rows = []
        for p in plan:
            if p.hf_name not in saved:
                continue
            a, g = saved[p.hf_name], state[p.hf_name].detach()
            rel = float((g - a).norm() / a.norm().clamp_min(1e-30))
            rows.append({"tensor": p.hf_name, "gguf": p.gguf_name, "type": p.qtype.name, "how": p.how,
                         "rel_error": rel})
    finally:
        for n, v in saved.items():
            state[n].copy_(v)
    by_type: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by_type.setdefault((r["type"], r["how"]), []).append(r["rel_error"])
    for r in rows:
        if r["how"] == "exact" or r["type"] in ("F32", "F16", "BF16"):
            r["expected"] = 0.0
            r["differs"] = r["rel_error"] > EXACT_TOL
        else:
            med = statistics.median(by_type[(r["type"], r["how"])])
            r["expected"] = med
            r["differs"] = r["rel_error"] > OUTLIER * max(med, EXACT_TOL)
    rows.sort(key=lambda r: -(r["rel_error"] / max(r["expected"], EXACT_TOL)))
    differs = [r for r in rows if r["differs"]]
    return {"file": gguf_path(export_dir).name, "tensors": len(rows), "differs": differs[:10],
            "worst": rows[:5], "measurement": "||file weight (gguf-py dequantized) - artifact weight|| / "
                                               "||artifact weight|| per tensor"}
