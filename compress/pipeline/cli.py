"""``compress run RECIPE.yaml [--dry-run]``: the whole pipeline from one file.

    compress run recipes/default.yaml --dry-run   # validate every section, print the plan, write nothing
    compress run recipes/default.yaml             # run what is not done yet; a second run does nothing
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def chat_hint(recipe) -> str | None:
    """The export to try first: the smallest GGUF of the recipe's own quantized artifacts (llama.cpp starts
    fastest), else any export."""
    from ..kinds import KINDS

    exports = [s for s in recipe.steps if s.kind in KINDS and KINDS[s.kind].export_format and s.out.is_dir()]
    if not exports:
        return None

    def size(step) -> int:
        return sum(f.stat().st_size for f in step.out.iterdir() if f.is_file())

    # the recipe's own quantized artifacts first (not a quant of the float model made for comparison)
    ours = [s for s in exports if s.inputs and s.inputs[0] != "model"] or exports
    ggufs = [s for s in ours if KINDS[s.kind].native == "llama.cpp"]
    best = min(ggufs or ours, key=size)
    return f"compress chat {_rel(best.out)}"


def register(app: typer.Typer) -> None:
    """Add ``compress run`` to the CLI."""

    @app.command(name="run")
    def run_(recipe: Path = typer.Argument(..., help="Recipe file (YAML): model, work_dir and stage sections."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything and print the plan; "
                                                                   "run nothing.")) -> None:
        """Run a recipe: prune, distill, quantize, export, bench, report and check, skipping finished stages."""
        from .recipe import load_recipe
        from .runner import dry_run as plan_only, run_recipe

        out = Console(highlight=False, soft_wrap=True, markup=False)
        r = load_recipe(recipe)
        out.print(f"recipe {recipe}: model {r.model}, {len(r.steps)} stages in {_rel(r.work_dir)}")
        if dry_run:
            plan_only(r, out.print)
            return
        result = run_recipe(r, out.print)
        if result.report is not None:
            out.print(f"report: {_rel(result.report)}")
        hint = chat_hint(r)
        if hint:
            out.print(f"try: {hint}")
        if result.failed_check:
            out.print(f"check failed: {result.failed_check} (see {_rel(r.step(result.failed_check).out)}/check.txt)")
            raise typer.Exit(1)


def _rel(p: Path) -> str:
    try:
        return str(Path(p).relative_to(Path.cwd()))
    except ValueError:
        return str(p)
