"""Plan and run a recipe: each stage is skipped when its folder already holds the artifact with the
content id its config and its input's content id give, so a finished recipe re-runs in seconds and a
change in one stage redoes that stage and what reads from it.

    result = run_recipe(load_recipe("recipes/default.yaml"), echo=print)
    result.ran, result.cached          # step keys
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError, ConfigError
from ..manifest import is_complete, read_manifest
from ..memory import peak_rss_with_children_mb
from .context import Context, root_id
from .recipe import Recipe, Step
from .stages import STAGES, report_done

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Status:
    step: Step
    expected: str | None
    done: bool


def plan(recipe: Recipe, ctx: Context) -> list[Status]:
    """Which steps are done, front to back; a step whose input is not done cannot be done either."""
    out = []
    for step in recipe.steps:
        expected = STAGES[step.kind].expected_id(step, ctx)
        done = expected is not None and _done(step, expected, ctx)
        ctx.ids[step.key] = expected if done else None
        out.append(Status(step, expected, done))
    return out


def _done(step: Step, expected: str, ctx: Context) -> bool:
    if step.kind == "report":
        return report_done(step, ctx)
    return is_complete(step.out, expected)


@dataclasses.dataclass
class RunResult:
    ran: list[str] = dataclasses.field(default_factory=list)
    cached: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    failed_check: str | None = None
    report: Path | None = None


def dry_run(recipe: Recipe, echo: Callable[[str], None]) -> list[Status]:
    """Validate every section without loading weights and print the plan."""
    check_outputs(recipe)
    ctx = Context(recipe)
    if ctx.id_of("model") is None:
        echo(f"model {recipe.model}: not fetched yet (the run fetches it first)")
    statuses = plan(recipe, ctx)
    for st in statuses:
        note = STAGES[st.step.kind].dry_check(st.step, ctx)
        state = "done (cached)" if st.done else "would run"
        echo(f"  {st.step.label:<28} {state:<14} {_where(st.step, ctx)}" + (f"  [{note}]" if note else ""))
    todo = sum(not s.done for s in statuses)
    echo(f"recipe ok: {len(statuses)} stages, {todo} to run, {len(statuses) - todo} done")
    return statuses


def run_recipe(recipe: Recipe, echo: Callable[[str], None]) -> RunResult:
    """Run every stage that is not done; prints one line per stage ("ran in N s" / "done (cached)")."""
    check_outputs(recipe)
    ctx = Context(recipe)
    if ctx.id_of("model") is None:
        from ..bundled import BUNDLED

        if recipe.model in BUNDLED:
            from ..fetch import ensure_fetched

            ensure_fetched(recipe.model)
            ctx.ids["model"] = root_id(recipe.model)
    # every stage still to run is checked first: an unknown profile must not surface after minutes of GPTQ
    for st in plan(recipe, Context(recipe)):
        if not st.done:
            STAGES[st.step.kind].dry_check(st.step, ctx)
    result = RunResult()
    for step in recipe.steps:
        kind = STAGES[step.kind]
        expected = kind.expected_id(step, ctx)
        if expected is not None and _done(step, expected, ctx):
            ctx.ids[step.key] = expected
            result.cached.append(step.key)
            echo(f"  {step.label:<28} done (cached)   {_where(step, ctx)}")
        else:
            t0 = time.perf_counter()
            echo(f"  {step.label:<28} running ...")
            try:
                produced = kind.run(step, ctx)
            except OSError as e:  # disk full, permissions: the writer already removed its temporary folder
                where = e.filename or step.out
                raise ArtifactError(f"{step.label}: {e.strerror or e} while writing {where}; nothing was "
                                    f"kept in {_rel(step.out)}") from None
            result.seconds[step.key] = time.perf_counter() - t0
            _release_memory()
            result.ran.append(step.key)
            ctx.ids[step.key] = _actual_id(step, kind.expected_id(step, ctx))
            if step.kind == "report":
                result.report = produced
            echo(f"  {step.label:<28} ran in {result.seconds[step.key]:.1f} s   {_where(step, ctx)}   "
                 f"(peak RSS so far {peak_rss_with_children_mb():.0f} MB)")
        if step.kind == "report" and result.report is None:
            result.report = ctx.path_of(step.inputs[0]) / "report" / "report.md"
        if step.kind == "check" and not read_manifest(step.out).report.get("passed"):
            result.failed_check = step.key
            echo((step.out / "check.txt").read_text().rstrip())
    if not result.ran:
        echo(f"nothing to do: all {len(result.cached)} stages were already done (cached) in {_rel(recipe.work_dir)}")
    else:
        total = sum(result.seconds.values())
        echo(f"ran {len(result.ran)} of {len(recipe.steps)} stages in {total:.1f} s ({len(result.cached)} cached)")
    return result


def _release_memory() -> None:
    """Hand the finished stage's freed memory back to the OS: without it the next stage's peak stacks on
    the previous one's (glibc keeps freed heap pages; measured +400 MB over the default recipe)."""
    from ..memory import release_memory

    release_memory()


def _actual_id(step: Step, expected: str | None) -> str | None:
    """The id the stage really wrote. A different one than predicted means the next run cannot skip it:
    say so instead of silently redoing work every time."""
    if step.kind == "report":
        return expected
    try:
        actual = read_manifest(step.out).content_id
    except ArtifactError:
        return None
    if expected is not None and actual != expected:
        log.warning("%s: content id %s differs from the predicted %s; a re-run will redo this stage",
                    step.label, actual, expected)
    return actual


def _where(step: Step, ctx: Context) -> str:
    if step.kind == "report":  # reports live inside their bench runs
        return ", ".join(_rel(ctx.path_of(k) / "report") for k in step.inputs)
    return _rel(step.out)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# ---- outputs ---------------------------------------------------------------------------------------

def check_outputs(recipe: Recipe) -> None:
    """work_dir is writable, and every existing output folder is one this recipe may replace."""
    work = recipe.work_dir
    probe = work
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ArtifactError(f"{work}: work_dir cannot be created or written ({probe} is not writable)")
    if work.exists() and not work.is_dir():
        raise ArtifactError(f"{work}: work_dir exists and is not a directory")
    for step in recipe.steps:
        out = step.out.resolve()
        if work.resolve() not in out.parents:
            raise ConfigError(f"{step.label}: output {out} is outside work_dir {work}")
        check_replaceable(step)


def check_replaceable(step: Step) -> None:
    """An existing output folder must be this stage's own artifact (stale or current); a folder of
    anything else is never overwritten."""
    out = step.out
    if step.kind == "report" or not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; remove it or choose another work_dir")
    if not any(out.iterdir()):
        return
    try:
        stage = read_manifest(out, check_files=False).stage
    except ArtifactError:
        stage = None
    if stage != step.kind:
        what = f"a {stage!r} artifact" if stage else "not an artifact"
        raise ArtifactError(f"{out}: output folder exists and is {what}, not this recipe's "
                            f"{step.kind!r} output; remove it or choose another work_dir")
