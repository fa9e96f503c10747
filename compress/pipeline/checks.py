"""``compress run --dry-run``: everything a recipe can get wrong, found before any heavy work.

Shapes come from config.json through a model built on PyTorch's ``meta`` device (no weights, no
memory), so the quantizer's own plan (:func:`compress.quantize.layers.make_plan`) lists every layer a
group size does not divide, exactly as the real run would, in a fraction of a second.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .. import kinds
from ..errors import IncompatibleLayerError, ModelLoadError
from ..jsonfile import read_json
from .context import Context, model_folder
from .recipe import Step


@functools.lru_cache(maxsize=8)
def meta_model(folder: str):
    """The architecture of ``folder`` with every tensor on the meta device (shapes only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder}/config.json: cannot be read ({str(e).splitlines()[0]})") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_quantize(step: Step, ctx: Context) -> str:
    from ..data import load_text
    from ..quantize.layers import make_plan
    from ..quantize.run import refuse_quantized_input

    src = ctx.path_of(step.inputs[0])
    cfg = step.config
    load_text(cfg.calib)  # missing or empty calibration text fails here
    if step.inputs[0] != "model":
        return f"{cfg.scheme}: layer widths checked when {step.inputs[0]} exists"
    refuse_quantized_input(str(src))
    folder = model_folder(str(src))
    if folder is None:
        return f"{cfg.scheme}: layer widths checked after the model is fetched"
    try:
        plan = make_plan(meta_model(str(folder)), cfg)  # lists every layer the group size does not fit
    except IncompatibleLayerError as e:
        raise IncompatibleLayerError(f"{step.label}: {e}") from None
    group = cfg.effective_group_size or "per channel"
    note = f"{cfg.scheme}, group {group}: {len(plan.targets)} tensors"
    if cfg.needs_calibration:
        from ..models import load_tokenizer
        from ..quantize.calibrate import calibration_ids

        ids = calibration_ids(load_tokenizer(str(src)), load_text(cfg.calib), samples=cfg.samples,
                              seq_len=cfg.seq_len, seed=cfg.seed)
        note += f", calibration {ids.shape[0]} x {ids.shape[1]} tokens of {cfg.calib}"
    return note


def check_export(step: Step, ctx: Context) -> str:
    """The architecture is one the format supports (config.json of the input, or of the model)."""
    key = step.inputs[0]
    upstream = ctx.recipe.step(key) if key != "model" else None
    if upstream is not None and upstream.kind != "quantize":
        return "architecture checked when its input exists"
    folder = model_folder(ctx.recipe.model)
    if folder is None:
        return "architecture checked after the model is fetched"
    config = read_json(folder / "config.json", ModelLoadError)
    try:  # the refusal names the step it comes from
        return _check_format(step, folder, config)
    except IncompatibleLayerError as e:
        raise IncompatibleLayerError(f"{step.label}: {e}") from None


def _check_format(step: Step, folder: Path, config: dict) -> str:
    # the exporter's own check, named by its row of the kinds table: a new export format brings its own
    ref = kinds.kind(step.kind).dry_run
    if ref is None:
        return f"{step.kind}: nothing to check from config.json"
    return kinds.resolve(ref)(step.config, folder, config)
