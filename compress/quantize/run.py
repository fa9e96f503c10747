"""``compress quantize`` end to end: checks, quantize_, the report's scoring, the artifact.

    out = run_quantize("smollm2-135m", QuantConfig(scheme="int4-gptq", group_size=64), Path("out/q4"))

Everything that can fail on bad input fails before calibration: the output directory, an input that
is already quantized, group sizes that do not fit (every such layer listed), NaN/inf weights, and
calibration text shorter than samples x seq_len. The artifact is built in a temporary directory
(ArtifactWriter), so Ctrl-C during calibration leaves nothing that looks complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data import load_text
from ..errors import ModelLoadError
from ..manifest import MANIFEST, ArtifactWriter, precheck_output, read_manifest, reuse_or_check
from ..memory import peak_rss_mb  # one definition: VmHWM, not ru_maxrss inherited across fork
from ..progress import steps
from .artifact import save_artifact
from .calibrate import calibration_ids
from .config import QuantConfig
from .core import quantize_
from .layers import Plan, check_finite, make_plan
from .scoring import score_against, store_logits

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


def run_quantize(model: str, cfg: QuantConfig, out: Path, *, force: bool = False,
                 dry_run: bool = False) -> Path | Plan:
    """Quantize ``model`` into the artifact ``out``; with ``dry_run``, check everything and return the
    plan without calibrating or writing. An existing artifact with the same content id is reused."""
    from ..models import load_model

    out = Path(out).absolute()
    with steps(f"quantize {cfg.scheme}", 5 + bool(cfg.eval_tokens)) as step:
        step("checking the input")
        refuse_quantized_input(model)
        if not dry_run:
            precheck_output(out, force=force, inputs=(model, cfg.calib))
        step("loading the model")
        lm = load_model(model)
        if not dry_run and reuse_or_check(out, stage="quantize", config=cfg, input_id=lm.model_id, force=force,
                                          inputs=(model, cfg.calib)):
            return out
        check_finite(lm.model)
        plan = make_plan(lm.model, cfg)  # lists every layer the group size does not fit
        calib = None
        if cfg.needs_calibration:
            calib = calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=cfg.samples,
                                    seq_len=cfg.seq_len, seed=cfg.seed)
        if dry_run:
            return plan
        with ArtifactWriter(out, stage="quantize", config=cfg, input_id=lm.model_id, force=force,
                            inputs=(model, cfg.calib)) as art:
            # one copy of the model: the unquantized logits go to disk now, instead of a deep copy of
            # the fp32 model kept beside the quantized one (scoring.py)
            if cfg.eval_tokens:
                step("scoring the unquantized model")
            reference = store_logits(lm.model, lm.tokenizer, cfg.calib, cfg.eval_tokens, where=art.path) \
                if cfg.eval_tokens else None
            step(f"quantizing ({cfg.method})")
            result = quantize_(lm.model, cfg, calib)
            if reference is not None:
                step("scoring against the unquantized model")
                result.report["eval"] = score_against(lm.model, reference, lm.tokenizer, cfg.calib, cfg.eval_tokens)
                reference.close()
            result.report["peak_rss_mb"] = round(peak_rss_mb(), 1)
            result.report["input"] = model
            step("writing the artifact")
            save_artifact(art.path, lm.model, lm.tokenizer, result)
            art.report.update(result.report)
    return out
