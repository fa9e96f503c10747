"""``compress prune`` end to end: checks, importance on calibration text, surgery, the artifact.

    out = prune("smollm2-135m", PruneConfig(method="depth", layers=20), Path("out/smol-20l"))

The artifact is an ordinary Hugging Face folder (config.json, model.safetensors, the source's
tokenizer files) plus manifest.json (stage "prune") whose report lists what was removed and why:
layers dropped with their importance, heads/channels kept per layer, parameters before/after, or
sparsity per layer. ``compress quantize`` and ``compress export`` take it like any model folder.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from ..data import load_text
from ..errors import ConfigError, ModelLoadError
from ..manifest import MANIFEST, ArtifactWriter, precheck_output, read_manifest, reuse_or_check
from ..progress import steps
from .config import PruneConfig
from .model_ops import copy_tokenizer_files, decoder_layers, param_count, source_folder

log = logging.getLogger(__name__)


def check_input(spec: str, method: str | None = None) -> None:
    """A quantized artifact is not a pruning input: its weights are dequantized integers; and a method the
    model's family row rules out (width on Phi-3's fused projections) is refused from config.json alone."""
    folder = source_folder(spec)
    if folder is None:
        return
    if method is not None and (folder / "config.json").is_file():
        import json

        from ..families import check_prune_method, family_for

        where = folder / "config.json"
        try:
            config = json.loads(where.read_text())
        except (OSError, ValueError):
            config = None  # the loader names what is wrong with it
        if isinstance(config, dict):
            check_prune_method(family_for(config, where), method, where)
    stage = read_manifest(folder, check_files=False).stage if (folder / MANIFEST).is_file() else None
    if stage == "quantize" or (folder / "quantization.json").is_file():
        raise ModelLoadError(f"{spec}: a quantized artifact; prune the float model, then quantize the result")


def check_target(model, cfg: PruneConfig) -> None:
    """Refuse targets the model cannot reach before any calibration work."""
    c = model.config
    if cfg.method == "depth":
        n = len(decoder_layers(model)[1])
        if cfg.layers >= n:
            raise ConfigError(f"prune.layers: target {cfg.layers} is not smaller than the model's {n} layers")
    if cfg.method == "width":
        from .width import check_targets

        check_targets(c, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads)


def prune(model_spec: str, cfg: PruneConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Prune ``model_spec`` into the artifact ``out_dir`` and return its path. An existing artifact
    with the same content id (same input, same config) is kept."""
    from ..models import load_model
    from ..quantize.calibrate import calibration_ids
    from ..memory import peak_rss_mb
    from ..quantize.scoring import score_against

    cfg.require_target()
    out = Path(out_dir).absolute()
    t0 = time.perf_counter()
    with steps(f"prune {cfg.describe()}", 5) as step:
        step("checking the input")
        check_input(model_spec, cfg.method)
        precheck_output(out, force=force, inputs=(model_spec, cfg.calib))
        step("loading the model")
        lm = load_model(model_spec)
        if reuse_or_check(out, stage="prune", config=cfg, input_id=lm.model_id, force=force,
                          inputs=(model_spec, cfg.calib)):
            return out
        check_target(lm.model, cfg)
        ids = calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=cfg.samples, seq_len=cfg.seq_len,
                              seed=cfg.seed)
        model = lm.model
        report: dict = {"method": cfg.method, "input": model_spec, "params_before": param_count(model)}
        step("measuring importance")
        if cfg.method == "depth":
            from .depth import choose_layers, drop_layers, layer_importance

            scores = layer_importance(model, ids, cfg.depth_metric)
            keep = choose_layers(scores, cfg.layers)
            dropped = [i for i in range(len(scores)) if i not in keep]
            report.update(metric=cfg.depth_metric, importance=[round(s, 6) for s in scores], layers_kept=keep,
                          layers_dropped={str(i): round(scores[i], 6) for i in dropped},
                          num_hidden_layers=[len(scores), len(keep)])
            step(f"dropping {len(dropped)} layers")
            pruned = drop_layers(model, keep)
        elif cfg.method == "width":
            from .width import prune_width, width_importance

            imp = width_importance(model, ids)
            step("removing channels and heads")
            pruned, rep = prune_width(model, imp, intermediate_size=cfg.intermediate_size,
                                      num_attention_heads=cfg.num_attention_heads,
                                      num_key_value_heads=cfg.num_key_value_heads)
            report.update(rep)
        else:
            from .sparsity import input_norms, sparsify_

            norms = input_norms(model, ids)
            step("zeroing weights")
            reference = copy.deepcopy(model) if cfg.eval_tokens else None
            pruned = model
            report.update(sparsify_(pruned, norms, pattern=cfg.method, sparsity=cfg.sparsity))
        report["params_after"] = param_count(pruned)
        report["params_ratio"] = round(report["params_after"] / report["params_before"], 4)
        if cfg.eval_tokens:
            ref = reference if cfg.method in ("wanda", "2:4") else model
            report["eval"] = score_against(pruned, ref, lm.tokenizer, "moby-dick", cfg.eval_tokens)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["peak_rss_mb"] = round(peak_rss_mb(), 1)
        step("writing the artifact")
        with ArtifactWriter(out, stage="prune", config=cfg, input_id=lm.model_id, force=force,
                            inputs=(model_spec, cfg.calib)) as art:
            pruned.save_pretrained(str(art.path))
            report["tokenizer_files"] = copy_tokenizer_files(source_folder(model_spec), art.path, lm.tokenizer)
            art.report.update(report)
    return out
