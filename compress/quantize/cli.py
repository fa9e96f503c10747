"""``compress quantize``: builds the QuantConfig a recipe file would hold and runs the stage.

    compress quantize smollm2-135m --scheme int4-gptq --group-size 64 --out out/smollm2-q4
    compress quantize smollm2-135m --scheme int4-awq --group-size 64 --save-config q.yaml --dry-run
    compress quantize smollm2-135m --config q.yaml --out out/smollm2-q4    # the same work
    compress quantize smollm2-135m --scheme int4-gptq --budget-bits 5.5 --target gguf --dry-run
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
        scheme: Optional[str] = typer.Option(None, help="int8 | w8a8 | int4-rtn | int4-gptq | int4-awq | "
                                                        "int5-rtn | int5-gptq | int5-awq."),
        group_size: Optional[int] = typer.Option(None, help="Columns per scale: 32, 64, 128 (0 = per channel); "
                                                            "default 32 with --target, else 128 (int8: per channel)."),
        symmetric: Optional[bool] = typer.Option(None, "--symmetric/--asymmetric",
                                                 help="Zero point or not (4/5-bit; GGUF's int8 is always symmetric)."),
        target: Optional[str] = typer.Option(None, help="gguf | onnx | both: only grids those files hold exactly, "
                                                        "and --budget-bits counts their sizes."),
        calib: Optional[str] = typer.Option(None, help="Calibration text: file, folder of .txt or bundled name."),
        samples: Optional[int] = typer.Option(None, help="Calibration windows."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per calibration window."),
        exclude: Optional[str] = typer.Option(None, help="Regex of module names to leave in float."),
        embeddings: Optional[str] = typer.Option(None, help="Embedding table: auto | keep | int8 | int5 | int4 "
                                                            "(auto: chosen by --budget-bits, else keep)."),
        lm_head: Optional[str] = typer.Option(None, help="Output projection: auto | keep | int8 | int5 | int4 "
                                                         "(tied: = embeddings)."),
        budget_bits: Optional[float] = typer.Option(None, help="Mix 4/5/8-bit and float tensors (tables included) "
                                                               "to this average bits per weight."),
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
        from ..outputs import write_text_output
        from ..errors import ConfigError
        from . import QuantConfig, run_quantize
        from ..manifest import read_manifest

        cfg = load_config_file(config, QuantConfig) if config else QuantConfig()
        overrides: dict[str, Any] = {k: v for k, v in dict(
            scheme=scheme, group_size=group_size, symmetric=symmetric, target=target, calib=calib, samples=samples,
            seq_len=seq_len, exclude=exclude, embeddings=embeddings, lm_head=lm_head, budget_bits=budget_bits,
            analyze=analyze, skip_incompatible=skip_incompatible, act_order=act_order, damp=damp, clip_search=clip_search,
            eval_tokens=eval_tokens).items() if v is not None}
        cfg = QuantConfig.from_dict({**cfg.to_dict(), **overrides})
        if save_config:
            write_text_output(save_config, cfg.to_yaml(), inputs=(model, cfg.calib))
        if out is None and not dry_run:
            raise ConfigError("quantize: --out DIR is required (or --dry-run)")
        result = run_quantize(model, cfg, out or Path("."), force=force, dry_run=dry_run)
        if dry_run:
            if as_json:
                print(json.dumps(plan_rows(result, cfg), indent=2))
            else:
                _print_plan(result, cfg)
            return
        report = read_manifest(result).report
        if as_json:
            print(json.dumps(report, indent=2))
            return
        _print_report(result, report)


def plan_rows(plan, cfg) -> list[dict[str, Any]]:
    """One row per matrix of the plan: its grid (or the budget's menu) and what GGUF and ONNX make of it."""
    from . import targets as tg

    rows = []
    for name, t in plan.targets.items():
        width = t.shape[1]
        options = cfg.menu if t.choose else (t.grid.bits,)
        fmts = {}
        for fmt in ("gguf", "onnx"):
            fmts[fmt] = [tg.describe(fmt, b, t.grid.group_size, cfg.grid_symmetric(b) if t.choose else t.grid.symmetric,
                                     width) for b in options]
        rows.append({"tensor": name, "shape": list(t.shape), "bits": list(options), "budget": t.choose,
                     "group": t.grid.group_size, "symmetric": t.grid.symmetric, "method": t.method, **fmts})
    for name, (shape, why) in plan.kept.items():
        rows.append({"tensor": name, "shape": list(shape), "bits": [16], "budget": False, "group": None,
                     "symmetric": None, "method": why, "gguf": ["F16"], "onnx": ["float"]})
    for name, reason in plan.skipped.items():
        rows.append({"tensor": name, "shape": None, "bits": [16], "budget": False, "group": None, "symmetric": None,
                     "method": f"skipped: {reason}", "gguf": ["F16"], "onnx": ["float"]})
    return rows


def _print_plan(plan, cfg) -> None:
    title = f"plan: {cfg.scheme}" + (f", --target {cfg.target}" if cfg.target else "") + \
        (f", --budget-bits {cfg.budget_bits} (bits chosen after the sensitivity analysis)" if cfg.budget_bits else "")
    t = Table("tensor", "shape", "bits", "group", "sym", "method", "GGUF", "ONNX MatMulNBits (bits/block)", title=title)
    for r in plan_rows(plan, cfg):
        t.add_row(r["tensor"], "x".join(map(str, r["shape"])) if r["shape"] else "",
                  "|".join("float" if b == 16 else str(b) for b in r["bits"]), str(r["group"] or ""),
                  "" if r["symmetric"] is None else ("yes" if r["symmetric"] else "no"), r["method"],
                  "|".join(r["gguf"]), "|".join(r["onnx"]))
    out = _console()
    out.print(t)
    out.print(f"tied embeddings: {'yes (lm_head shares model.embed_tokens)' if plan.tied else 'no'}")
    if plan.fixed:
        out.print("counted in the budget at a fixed precision: " + ", ".join(
            f"{n} ({'float' if b == 16 else f'int{b}'})" for n, (_, b) in plan.fixed.items()))


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
        t.add_row("budget", f"{b['bits_per_weight']:.3f} of {b['target_bits']} bits/weight as "
                            f"{b.get('counted_in', 'the grids')} stores them: "
                            + ", ".join(f"{n} at {'float' if k == '16' else k + ' bits'}" for k, n in b["layers"].items()
                                        if n)
                            + "".join(f"; {name} {how}" for name, how in b.get("tables", {}).items()))
    for fmt, f in r.get("formats", {}).items():
        t.add_row(f"as {fmt.upper()}", ", ".join(f"{n} {k}" for k, n in sorted(f["tensors"].items()))
                  + f"; {f['matrix_bytes'] / 1e6:.1f} MB of matrices")
    t.add_row("time / peak RSS", f"{r['seconds']:.1f} s / {r.get('peak_rss_mb', 0):.0f} MB")
    out = _console()
    out.print(t)
    if "analysis" in r:
        widths = [b for b in (4, 5) if any(f"kl_int{b}" in row for row in r["analysis"].values())]
        a = Table("layer", "params", *[f"KL int{b} alone" for b in widths], "KL int8 (est. for linears)", "bits",
                  title="sensitivity: each tensor alone rounded (most sensitive first)")
        choice = r.get("budget", {}).get("choice", {})
        key = f"kl_int{widths[0]}" if widths else "kl_int8"
        for name, row in sorted(r["analysis"].items(), key=lambda kv: -kv[1].get(key, 0.0)):
            a.add_row(name, f"{row['params']:,}", *[f"{row[f'kl_int{b}']:.2e}" if f"kl_int{b}" in row else ""
                                                    for b in widths],
                      f"{row['kl_int8']:.1e}" if "kl_int8" in row else "", str(choice.get(name, "")))
        out.print(a)
