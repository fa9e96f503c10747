"""``diagnose``: attribution, export check, fixes and (optionally) the applied fix, as one result dict.

    result = diagnose("out/smollm2-int4", DiagnoseConfig(tokens=1024), apply_out=Path("out/fixed"))
    result["layers"][0]["label"], result["fixes"]["keep8"]["suggested"]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..manifest import read_manifest
from ..progress import steps
from .apply import weight_getter, write_group, write_keep8
from .attribute import attribute
from .config import DiagnoseConfig
from .exported import compare_runtime, export_source, gguf_tensors
from .fixes import calibration_note, group_option, keep8_options, shown_options
from .joint import Int8Weights, measure_options
from .measure import diagnosis_tokens

log = logging.getLogger(__name__)


def _torch_runtime(lm):
    from runtimes.torch_runtime import TorchRuntime

    return TorchRuntime().use(lm)


def diagnose(artifact: str | Path, cfg: DiagnoseConfig = DiagnoseConfig(), *, apply_out: Path | None = None,
             force: bool = False) -> dict[str, Any]:
    """Diagnose a quantized artifact, or an export of one (GGUF/ONNX folder); see the package doc."""
    from ..evaluate import StoredLogits
    from ..models import load_model
    from ..quantize.format import open_quantized

    artifact = Path(artifact).absolute()
    torch.set_num_threads(cfg.threads)
    exp = export_source(artifact) if artifact.is_dir() else None
    source = artifact
    if exp is not None:
        if exp[1] is None or not exp[1].is_dir():
            raise ConfigError(f"{artifact}: an {exp[0]} artifact whose source ({exp[1]}) is not here to compare with")
        source = exp[1]
    if not (source / "quantization.json").is_file():
        raise ConfigError(f"{source}: not a quantized artifact (no quantization.json); diagnose attributes a "
                          "quantize artifact's loss, or an export of one")
    qf = open_quantized(source)
    man = read_manifest(source)
    ref_spec = cfg.reference or man.report.get("input")
    if not isinstance(ref_spec, str):
        raise ConfigError(f"{source}: its manifest does not name the model it came from; pass --reference MODEL")
    result: dict[str, Any] = {"artifact": str(artifact), "source": str(source), "reference": ref_spec,
                              "config": cfg.to_dict(), "scheme": qf.info.get("scheme")}
    with steps("diagnose", 4 + (exp is not None) + 2 * (apply_out is not None)) as step:
        step("loading the reference and the artifact")
        ref = load_model(ref_spec)
        lm = load_model(str(source))
        toks = diagnosis_tokens(lm.tokenizer, cfg.data, cfg.tokens)
        ref_logp = toks.reference_logp(ref.model)
        step(f"attributing the loss ({len(qf.layers)} quantized tensors)")
        att = attribute(lm.model, ref.model, list(qf.layers), toks, cfg, ref_logp)
        result["attribution"] = att.to_dict()
        step("predicting fixes (the options around the suggestion measured with their int8 weights in place)")
        options, additive = keep8_options(att, qf.layers, cfg.target_share, cfg.keep)
        suggested = 0
        if options:
            suggested = measure_options(lm.model, Int8Weights(qf.layers, weight_getter(ref.model)), options, att.kl,
                                        cfg.target_share, toks, ref_logp, start=additive, keep=cfg.keep)
        result["fixes"] = {
            "keep8": {"options": [o.to_dict() for o in shown_options(options, suggested)], "suggested": suggested,
                      "additive_suggestion": additive,
                      "basis": "measured: the option's KL with its layers at the int8 weights --apply writes, all "
                               "in place at once (same tokens); additive (options not measured): KL(artifact) minus "
                               "the layers' recoveries x (1 - int8's relative noise power)"},
            "group": group_option(att, qf.layers, weight_getter(ref.model)),
            "tables": {"embeddings": qf.info.get("embeddings", "keep"), "lm_head": qf.info.get("lm_head", "keep")},
            "calibration": calibration_note({"config": man.config}),
        }
        if exp is not None:
            step(f"comparing the {exp[0]} file with its artifact")
            reference = StoredLogits.of(_torch_runtime(ref), toks.windows)
            result["export"] = compare_runtime(artifact, exp[0], _torch_runtime(lm), reference, toks.windows,
                                               cfg.threads)
            if exp[0] == "export-gguf":
                result["export"]["tensors"] = gguf_tensors(artifact, source, lm.model)
        step("done" if apply_out is None else "applying the fix")
        if apply_out is not None:
            result["applied"] = _apply(cfg, result, source, exp, apply_out, ref, toks, ref_logp, force)
    return result


def _apply(cfg, result, source: Path, exp, out: Path, ref, toks, ref_logp, force: bool) -> dict[str, Any]:
    from ..evaluate import StoredLogits
    from ..models import load_model

    fixes = result["fixes"]
    if cfg.fix == "keep8":
        k = fixes["keep8"]
        if not k["options"]:
            raise ConfigError("--apply: no layer recovers any loss; nothing to keep at 8 bits")
        opt = next(o for o in k["options"] if o["n"] == k["suggested"])
        fixed = write_keep8(source, out, opt["tensors"], weight_getter(ref.model), force=force,
                            why={"predicted_kl": opt["predicted_kl"], "kl_before": result["attribution"]["kl"]})
        applied = {"fix": "keep8", "n": opt["n"], "tensors": opt["tensors"], "predicted_kl": opt["predicted_kl"],
                   "extra_bytes": opt["extra_bytes"], "how": "only the chosen layers re-quantized; the rest copied"}
    elif cfg.fix == "group":
        g = fixes["group"]
        if g is None:
            raise ConfigError("--apply --fix group: the artifact's group size cannot be halved (already 32, or int8)")
        fixed = write_group(source, out, g["new_group_size"], force=force)
        applied = {"fix": "group", "group_size": g["new_group_size"], "predicted_kl": g["predicted_kl"],
                   "extra_bytes": g["extra_bytes"], "how": "quantize re-run with the new group size (every layer changes)"}
    else:
        raise ConfigError(f"--fix {cfg.fix}: the tables are ranked with the layers; apply keep8 to keep them at 8 bits")
    applied["out"] = str(fixed)
    lm = load_model(str(fixed))
    applied["measured_kl_pytorch"] = toks.kl(ref_logp, lambda i, b: lm.model(b.ids, use_cache=False).logits)
    if exp is not None:
        applied.update(_reexport(exp[0], Path(result["artifact"]), fixed, force))
        from runtimes import DeviceProfile, get_runtime

        from ..evaluate import score_windows
        from ..kinds import KINDS

        rt = get_runtime(KINDS[exp[0]].native)
        rt.load(applied["export_out"], DeviceProfile(threads=cfg.threads))
        reference = StoredLogits.of(_torch_runtime(ref), toks.windows)
        applied["measured_kl_runtime"] = score_windows(rt, toks.windows, reference=reference)["kl"]
        applied["runtime"] = rt.name
    measured = applied.get("measured_kl_runtime", applied["measured_kl_pytorch"])
    applied["prediction_error"] = (measured - applied["predicted_kl"]) / measured if measured > 0 else 0.0
    return applied


def _reexport(stage: str, export_dir: Path, fixed: Path, force: bool) -> dict[str, Any]:
    """Export the fixed artifact with the original export's config, beside it (``DIR-gguf``/``DIR-onnx``)."""
    from ..kinds import KINDS

    man = read_manifest(export_dir)
    kind = KINDS[stage]
    out = fixed.parent / f"{fixed.name}-{kind.export_format}"
    kind.verb()(str(fixed), kind.config_class().from_dict(man.config), out, force=force)
    return {"export_out": str(out), "export_config": man.config}
