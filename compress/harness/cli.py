"""``compress bench | report | check | profiles``: the CLI builds the BenchConfig/CheckConfig a recipe
would hold and calls the verbs of :mod:`compress.harness`.

    compress bench runs/q4_0 runs/onnx-int4 --profile phone --out runs/bench-phone
    compress report runs/bench-phone
    compress check runs/bench-phone --baseline benchmarks/baselines/x.json --tolerance ppl=0.02
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=220)


def _print_table(title: str, table) -> None:
    if not table:
        return
    cols, body = table
    t = Table(*cols, title=title)
    for row in body:
        t.add_row(*row)
    _console().print(t)


def register(app: typer.Typer) -> None:
    """Add bench, report, check and profiles to the compress CLI."""

    @app.command()
    def bench(
        artifacts: list[str] = typer.Argument(..., help="Artifact folders, .gguf files or bundled names; LABEL=PATH names a row."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
        runtimes: Optional[str] = typer.Option(None, help="Comma-separated runtimes (default: each artifact's own)."),
        profile: Optional[str] = typer.Option(None, help="Device profile name or YAML file (compress profiles)."),
        reference: Optional[str] = typer.Option(None, help="Reference model (default: from the manifests)."),
        data: Optional[str] = typer.Option(None, help="Text for perplexity/KL."),
        max_tokens: Optional[int] = typer.Option(None, help="Text tokens scored."),
        window: Optional[int] = typer.Option(None, help="Tokens per scoring window."),
        tasks: Optional[str] = typer.Option(None, help="Comma-separated multiple-choice tasks ('' for none)."),
        mc_limit: Optional[int] = typer.Option(None, help="Examples per task (0 = all)."),
        prompt_tokens: Optional[int] = typer.Option(None, help="Prompt length for time to first token."),
        new_tokens: Optional[int] = typer.Option(None, help="Tokens generated per repetition."),
        depths: Optional[str] = typer.Option(None, help="Context depths for speed, e.g. 0,512,2048 (default 0)."),
        warmup: Optional[int] = typer.Option(None, help="Warm-up generations."),
        repetitions: Optional[int] = typer.Option(None, help="Timed generations (median and spread)."),
        accuracy: Optional[bool] = typer.Option(None, "--accuracy/--no-accuracy", help="Accuracy phase."),
        latency: Optional[bool] = typer.Option(None, "--latency/--no-latency", help="Latency + memory phase."),
        roofline: Optional[bool] = typer.Option(None, "--roofline/--no-roofline", help="Bandwidth roofline."),
        report: bool = typer.Option(False, "--report", help="Also write the report."),
        config: Optional[Path] = typer.Option(None, help="Bench config file (YAML); options override it."),
        save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
        force: bool = typer.Option(False, "--force", help="Replace an existing run directory."),
    ) -> None:
        """Accuracy (against the reference), latency, peak RSS and roofline of artifacts on every runtime."""
        from compress.config import load_config_file
        from compress.outputs import write_text_output
        from compress.errors import ConfigError

        from . import BenchConfig, bench as do_bench, read_rows, write_report
        from .tables import accuracy_table, latency_table

        cfg = load_config_file(config, BenchConfig) if config else BenchConfig()
        opts: dict[str, Any] = dict(profile=profile, reference=reference, data=data, max_tokens=max_tokens,
                                    window=window, mc_limit=mc_limit, prompt_tokens=prompt_tokens,
                                    new_tokens=new_tokens, warmup=warmup, repetitions=repetitions, accuracy=accuracy,
                                    latency=latency, roofline=roofline)
        opts = {k: v for k, v in opts.items() if v is not None}
        if runtimes is not None:
            opts["runtimes"] = [r.strip() for r in runtimes.split(",") if r.strip()]
        if tasks is not None:
            opts["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
        if depths is not None:
            try:
                opts["depths"] = [int(d) for d in depths.split(",") if d.strip()]
            except ValueError:
                raise ConfigError(f"--depths: {depths!r} is not a comma-separated list of token counts") from None
        cfg = BenchConfig.from_dict({**cfg.to_dict(), **opts})
        if save_config:
            write_text_output(save_config, cfg.to_yaml(), inputs=[*artifacts, cfg.reference, cfg.data])
        run = do_bench(cfg, artifacts, out, force=force)
        rows = read_rows(run)
        _print_table("accuracy (same tokens through every runtime)", accuracy_table(rows))
        _print_table("latency and memory", latency_table(rows))
        _console().print(f"run: {run}")
        if report:
            _console().print(f"report: {write_report(run)['html']}")

    @app.command(name="report")
    def report_(run_dir: Path = typer.Argument(..., help="A bench run directory.")) -> None:
        """Write Markdown, a self-contained HTML page, PNG plots and JSONL rows of a bench run."""
        from . import write_report

        paths = write_report(run_dir)
        for name, p in paths.items():
            _console().print(f"{name}: {p}")

    @app.command(name="check")
    def check_(
        run_dir: Path = typer.Argument(..., help="A bench run directory."),
        baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON file."),
        tolerance: Optional[str] = typer.Option(None, help="Overrides, e.g. ppl=0.02,kl=0.005,top1=0.02,mc=0.02,size=0.01,decode=0.2."),
        latency: bool = typer.Option(False, "--latency", help="Also gate decode speed (noisy on shared machines)."),
        update_baseline: bool = typer.Option(False, "--update-baseline", help="Write this run as the new baseline."),
        spread: Optional[list[Path]] = typer.Option(None, "--spread-run", help="With --update-baseline: the same bench run again; per-row tolerances from the spread."),
        diagnose: bool = typer.Option(True, "--diagnose/--no-diagnose", help="On a regression, say which layer (or export tensor) carries the loss."),
    ) -> None:
        """Exit 1 with a diff when perplexity, KL, top-1, MC accuracy or size regressed past tolerance."""
        from .gate import check, parse_tolerances, tolerance_names, write_baseline

        cfg = parse_tolerances(tolerance, latency)
        if update_baseline:
            _console().print(f"baseline written: {write_baseline(run_dir, baseline, spread or [])}")
            return
        result = check(run_dir, baseline, cfg, tolerance_names(tolerance))
        print(result.table())
        if not result.passed:
            if diagnose:  # issue #15: say where the loss is (compress/diagnose/gate.py)
                from compress.diagnose.gate import diagnose_failures

                print("diagnosis:\n" + "\n".join(f"  {ln}" for ln in diagnose_failures(result, run_dir)))
            raise typer.Exit(1)

    @app.command()
    def profiles() -> None:
        """List device profiles (shipped, and from $COMPRESS_PROFILES directories)."""
        from .profiles import list_profiles, load_profile

        t = Table("name", "threads", "memory budget MB", "storage budget MB", "preferred runtime", "file")
        for name, path in list_profiles().items():
            p = load_profile(path)
            t.add_row(name, str(p.threads), str(p.memory_budget_mb or "-"), str(p.storage_budget_mb or "-"),
                      p.preferred_runtime, str(path))
        _console().print(t)
