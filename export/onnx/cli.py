"""``compress export ARTIFACT --format onnx --qtype int4 --out DIR``: the ONNX entry of export/cli.py.

    compress export out/smollm2-int4 --format onnx --qtype int4 --out out/smollm2-onnx-int4
    compress export smollm2-135m --format onnx --qtype fp32 --ort-format --out out/smollm2-onnx
    compress export smollm2-135m --format onnx --qtype int8 --dry-run

``--qtype`` names the precision (auto, the default: a quantized artifact as it is, a float one fp32;
fp32, fp16, int8, int4); ``--requantize`` lets int4/int8 round an artifact's integers again; the
other options map one to one onto
:class:`export.onnx.OnnxConfig` fields, and a config file (``--config``) holds the same fields.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

out = Console()
# CLI option -> OnnxConfig field
_FIELDS = {"qtype": "precision", "embeddings": "embeddings", "check_tokens": "check_tokens",
           "accuracy_level": "accuracy_level", "block_size": "block_size", "lm_head": "lm_head",
           "max_length": "max_length", "ort_format": "ort_format", "requantize": "requantize",
           "kv_dtype": "kv_dtype", "scale_type": "scale_type"}


def run(req) -> None:
    """Handler for ``--format onnx`` (an :class:`export.cli.ExportRequest`)."""
    from compress.config import suggest
    from compress.errors import ConfigError

    from . import OnnxConfig, export_onnx

    given = {}
    for k, v in req.options.items():
        if v is None:
            continue
        if k not in _FIELDS:
            raise ConfigError(f"--{k.replace('_', '-')}: not an option of --format onnx{suggest(k, _FIELDS)}; "
                              f"ONNX options: {', '.join('--' + f.replace('_', '-') for f in _FIELDS)}")
        if k == "accuracy_level" and isinstance(v, str) and v.strip().isdigit():
            v = int(v)  # the CLI takes "auto" or a number
        given[_FIELDS[k]] = v
    cfg = req.build_config(OnnxConfig, given)
    if req.dry_run:
        _dry_run(req, cfg)
        return
    _print(export_onnx(req.artifact, cfg, req.out, force=req.force))


def _dry_run(req, cfg) -> None:
    """Checks that need the model but write nothing: architecture, shapes, the form of every weight."""
    from compress.manifest import check_writable_target

    from .arch import model_dims, spec_for
    from .export import _load
    from .plan import make_plan
    from .weights import open_weights

    check_writable_target(Path(req.out).absolute(), force=req.force, inputs=[req.artifact])
    lm = _load(req.artifact)
    spec = spec_for(lm.model.config)
    dims = model_dims(lm.model, spec)
    plan = make_plan(open_weights(lm), dims, cfg)
    out.print(f"plan: {spec.name}, {len(dims.layers)} layers, hidden {dims.hidden}, vocab {dims.vocab}, "
              f"precision {plan.precision}, accuracy_level {cfg.accuracy_level}")
    out.print(json.dumps(plan.summary()))
    ways: dict[str, list[str]] = {}
    for name, how in plan.carried().items():
        ways.setdefault(how, []).append(name)
    for how, names in ways.items():  # one line per way of carrying, not per layer
        out.print(f"  {len(names):4d} x {how}: {names[0]}{', ...' if len(names) > 1 else ''}")


def _print(path: Path) -> None:
    from compress.manifest import read_manifest

    r = read_manifest(path.parent).report
    t = Table(title=str(path), show_header=False)
    t.add_row("size", f"{r['onnx_bytes'] / 1e6:.1f} MB" + (f", .ort {r['ort_bytes'] / 1e6:.1f} MB" if "ort_bytes" in r
                                                          else ""))
    t.add_row("weights", json.dumps(r["plan"]))
    tol = r["validation"]["tolerance"]
    for name in ("prefill", "kv_cache"):
        v = r["validation"][name]
        t.add_row(f"onnxruntime vs PyTorch ({name})",
                  f"top-1 {v['top1_agreement']:.2%} (min {tol['min_top1']:.1%}), mean KL {v['kl']:.2e} "
                  f"(max {tol['max_kl']:.1e}), max |dlogit| {v['max_abs']:.3g} on {v['positions']} positions")
    if r["validation"].get("tolerance_basis"):
        t.add_row("tolerance for", r["validation"]["tolerance_basis"])
    t.add_row("export time", f"{r['export_s']:.1f} s")
    out.print(t)
