"""``compress quantize`` end to end: checks, quantize_, the report's scoring, the artifact.

    out = run_quantize("smollm2-135m", QuantConfig(scheme="int4-gptq", group_size=64), Path("out/q4"))

Everything that can fail on bad input fails before calibration: the output directory, an input that
is already quantized, group sizes that do not fit (every such layer listed), NaN/inf weights, and
calibration text shorter than samples x seq_len. The artifact is built in a temporary directory
(ArtifactWriter), so Ctrl-C during calibration leaves nothing that looks complete.
"""

from __future__ import annotations

import copy
import logging
import resource
import sys
from pathlib import Path
from typing import Any

from ..data import load_text, text_windows, tokenize_text, uses_bos
from ..errors import ModelLoadError
from ..manifest import MANIFEST, ArtifactWriter, check_writable_target, content_id, is_complete, read_manifest
from ..progress import steps
from .artifact import save_artifact
from .calibrate import calibration_ids
from .config import QuantConfig
from .core import quantize_
from .layers import Plan, check_finite, make_plan

log = logging.getLogger(__name__)


def refuse_quantized_input(spec: str) -> None:
    """An artifact of this stage (or any folder with a quantization.json) is not a valid input."""
    from ..models import resolve_model

    src = resolve_model(spec)
    if src.kind != "hf_dir":
        return
    ours = (src.path / MANIFEST).is_file() and read_manifest(src.path, check_files=False).stage == "quantize"
    if ours or (src.path / "quantization.json").is_file():
        raise ModelLoadError(f"{spec}: already quantized (a compress quantize artifact); quantizing its "
                             "dequantized weights again would compound the rounding - start from the original model")


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def score_against(model, reference, tokenizer, data: str, tokens: int) -> dict[str, Any]:
    """Perplexity of both models and KL(reference || model) on the first ``tokens`` of ``data``."""
    from runtimes.torch_runtime import TorchRuntime

    from ..evaluate import score_windows
    from ..models import LoadedModel, ModelSource

    text = load_text(data)
    ids = tokenize_text(tokenizer, text.text[:tokens * 12], max_tokens=tokens)
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    window = min(512, len(ids) + (bos is not None))
    windows = text_windows(ids, window=window, stride=window - (bos is not None), bos_id=bos, source=text.name)
    src = ModelSource("in-memory", "hf_dir")
    q = TorchRuntime().use(LoadedModel(model, tokenizer, src, "quantized"))
    r = TorchRuntime().use(LoadedModel(reference, tokenizer, src, "reference"))
    sq = score_windows(q, windows, reference=r)
    sr = score_windows(r, windows)
    return {"data": text.name, "tokens": sq["tokens"], "perplexity_reference": sr["perplexity"],
            "perplexity": sq["perplexity"], "perplexity_ratio": sq["perplexity"] / sr["perplexity"],
            "kl": sq["kl"], "top1_agreement": sq["top1_agreement"]}


def run_quantize(model: str, cfg: QuantConfig, out: Path, *, force: bool = False,
                 dry_run: bool = False) -> Path | Plan:
    """Quantize ``model`` into the artifact ``out``; with ``dry_run``, check everything and return the
    plan without calibrating or writing. An existing artifact with the same content id is reused."""
    from ..models import load_model

    out = Path(out).absolute()
    with steps(f"quantize {cfg.scheme}", 5) as step:
        step("checking the input")
        refuse_quantized_input(model)
        if not dry_run and not (out.exists() and is_complete(out)):
            check_writable_target(out, force=force)
        step("loading the model")
        lm = load_model(model)
        if not force and not dry_run and is_complete(out, content_id("quantize", cfg, lm.model_id)):
            log.warning("%s already holds this quantization (same content id): kept", out)
            return out
        if not dry_run and out.exists() and is_complete(out):
            check_writable_target(out, force=force)
        check_finite(lm.model)
        plan = make_plan(lm.model, cfg)  # lists every layer the group size does not fit
        calib = None
        if cfg.needs_calibration:
            calib = calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=cfg.samples,
                                    seq_len=cfg.seq_len, seed=cfg.seed)
        if dry_run:
            return plan
        reference = copy.deepcopy(lm.model) if cfg.eval_tokens else None
        with ArtifactWriter(out, stage="quantize", config=cfg, input_id=lm.model_id, force=force) as art:
            step(f"quantizing ({cfg.method})")
            result = quantize_(lm.model, cfg, calib)
            if reference is not None:
                step("scoring against the unquantized model")
                result.report["eval"] = score_against(lm.model, reference, lm.tokenizer, cfg.calib, cfg.eval_tokens)
                del reference
            result.report["peak_rss_mb"] = round(peak_rss_mb(), 1)
            result.report["input"] = model
            step("writing the artifact")
            save_artifact(art.path, lm.model, lm.tokenizer, result)
            art.report.update(result.report)
    return out
