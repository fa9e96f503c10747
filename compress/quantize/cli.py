"""``compress quantize``: builds the QuantConfig a recipe file would hold and runs the stage.

    compress quantize smollm2-135m --scheme int4-gptq --group-size 64 --out out/smollm2-q4
    compress quantize smollm2-135m --scheme int4-awq --group-size 64 --save-config q.yaml --dry-run
    compress quantize smollm2-135m --config q.yaml --out out/smollm2-q4    # the same work
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table



def _console() -> Console:
    # Piped or captured output gets a wide table: layer names must not be wrapped or cut.
    return Console() if sys.stdout.isatty() else Console(width=200)


def register(app: typer.Typer) -> None:
    """Add the ``quantize`` command to the compress CLI."""

    @app.command()
    def quantize(
        model: str = typer.Argument(..., help="Folder, .gguf file, bundled name or hub id."),
        out: Optional[Path] = typer.Option(None, "--out", help="Artifact directory to write."),
        scheme: Optional[str] = typer.Option(None, help="int8 | w8a8 | int4-rtn | int4-gptq | int4-awq."),
        group_size: Optional[int] = typer.Option(None, help="Columns per scale: 32, 64, 128 (0 = per channel)."),
        symmetric: Optional[bool] = typer.Option(None, "--symmetric/--asymmetric", help="Zero point or not."),
        calib: Optional[str] = typer.Option(None, help="Calibration text: file, folder of .txt or bundled name."),
        samples: Optional[int] = typer.Option(None, help="Calibration windows."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per calibration window."),
        exclude: Optional[str] = typer.Option(None, help="Regex of module names to leave in float."),
        embeddings: Optional[str] = typer.Option(None, help="Embedding table: keep | int8 | int4."),
        lm_head: Optional[str] = typer.Option(None, help="Output projection: keep | int8 | int4 (tied: = embeddings)."),
        budget_bits: Optional[float] = typer.Option(None, help="Mix int4/int8/16-bit layers to this average."),
        analyze: Optional[bool] = typer.Option(None, "--analyze", help="Per-layer sensitivity table."),
        skip_incompatible: Optional[bool] = typer.Option(None, "--skip-incompatible",
                                                         help="Leave layers the group size does not fit in float."),
        act_order: Optional[bool] = typer.Option(None, "--act-order", help="GPTQ: salient columns first."),
        damp: Optional[float] = typer.Option(None, help="GPTQ damping (fraction of the mean Hessian diagonal)."),
        clip_search: Optional[bool] = typer.Option(None, "--clip-search/--no-clip-search",
                                                   help="GPTQ: search each group's range (default on)."),
        eval_tokens: Optional[int] = typer.Option(None, help="Held-in tokens scored for the report (0 = none)."),
        config: Optional[Path] = typer.Option(None, help="Quantize config file (YAML); options override it."),
        save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and print the plan; write nothing."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Quantize a model to int8 / w8a8 / int4 (RTN, GPTQ, AWQ), with a report and an artifact."""
        from ..config import load_config_file
        from ..errors import ConfigError
        from . import QuantConfig, run_quantize
        from ..manifest import read_manifest

        cfg = load_config_file(config, QuantConfig) if config else QuantConfig()
        overrides: dict[str, Any] = {k: v for k, v in dict(
            scheme=scheme, group_size=group_size, symmetric=symmetric, calib=calib, samples=samples,
            seq_len=seq_len, exclude=exclude, embeddings=embeddings, lm_head=lm_head, budget_bits=budget_bits,
            analyze=analyze, skip_incompatible=skip_incompatible, act_order=act_order, damp=damp, clip_search=clip_search,
            eval_tokens=eval_tokens).items() if v is not None}
        cfg = QuantConfig.from_dict({**cfg.to_dict(), **overrides})
        if save_config:
            save_config.write_text(cfg.to_yaml())
        if out is None and not dry_run:
            raise ConfigError("quantize: --out DIR is required (or --dry-run)")
        result = run_quantize(model, cfg, out or Path("."), force=force, dry_run=dry_run)
        if dry_run:
            _print_plan(result, cfg)
            return
        report = read_manifest(result).report
        if as_json:
            print(json.dumps(report, indent=2))
            return
        _print_report(result, report)


def _print_plan(plan, cfg) -> None:
    t = Table("tensor", "shape", "bits", "group", "method", title=f"plan: {cfg.scheme}")
    for name, tg in plan.targets.items():
        t.add_row(name, "x".join(map(str, tg.shape)), str(tg.grid.bits), str(tg.grid.group_size), tg.method)
    for name, reason in plan.skipped.items():
        t.add_row(name, "", "float", "", f"skipped: {reason}")
    out = _console()
    out.print(t)
    out.print(f"tied embeddings: {'yes (lm_head shares model.embed_tokens)' if plan.tied else 'no'}")


def _print_report(path: Path, r: dict[str, Any]) -> None:
    t = Table(title=f"{path} ({r['scheme']}, group {r['group_size']}, "
                    f"{'symmetric' if r['symmetric'] else 'asymmetric'})", show_header=False)
    t.add_row("quantized", f"{r['quantized']} tensors: " + ", ".join(f"{n} {k}" for k, n in r["precision"].items() if n))
    reasons: dict[str, int] = {}
    for reason in r["skipped"].values():
        reasons[reason] = reasons.get(reason, 0) + 1
    t.add_row("skipped", "; ".join(f"{n} x {why}" for why, n in reasons.items()) or "none")
    t.add_row("embeddings / lm_head", f"{r['embeddings']} / {r['lm_head']}")
    t.add_row("size", f"{r['bytes_before'] / 1e6:.1f} MB ({r['bits_per_weight_before']:.2f} bits/weight) -> "
                      f"{r['bytes_after'] / 1e6:.1f} MB ({r['bits_per_weight_after']:.2f}); quantized tensors "
                      f"{r['quantized_bits_per_weight']:.3f} bits/weight; {r['bytes_after_fp16_rest'] / 1e6:.1f} MB "
                      "with float tensors in fp16")
    if "eval" in r:
        e = r["eval"]
        t.add_row("perplexity", f"{e['perplexity']:.3f} vs {e['perplexity_reference']:.3f} unquantized "
                                f"(x{e['perplexity_ratio']:.4f}) on {e['tokens']} held-in tokens of {e['data']}")
        t.add_row("KL / top-1", f"{e['kl']:.5f} / {e['top1_agreement']:.2%}")
    if "budget" in r:
        b = r["budget"]
        t.add_row("budget", f"{b['bits_per_weight']:.3f} of {b['target_bits']} bits/weight on decoder linears: "
                            + ", ".join(f"{n} at {k} bits" for k, n in b["layers"].items()))
    t.add_row("time / peak RSS", f"{r['seconds']:.1f} s / {r.get('peak_rss_mb', 0):.0f} MB")
    out = _console()
    out.print(t)
    if "analysis" in r:
        a = Table("layer", "params", "KL int4 alone", "KL int8 (est.)", "bits",
                  title="sensitivity: each layer alone at int4 (most sensitive first)")
        choice = r.get("budget", {}).get("choice", {})
        for name, row in sorted(r["analysis"].items(), key=lambda kv: -kv[1]["kl_int4"]):
            a.add_row(name, f"{row['params']:,}", f"{row['kl_int4']:.2e}", f"{row['kl_int8']:.1e}",
                      str(choice.get(name, "")))
        out.print(a)
