"""The table of step kinds a recipe can name: each one's verb, content id and dry-run checks.

    STAGES["quantize"].run(step, ctx)         # calls run_quantize(input, cfg, step.out, force=...)
    STAGES["quantize"].expected_id(step, ctx) # the content id its manifest will carry

A stage whose verb takes one input (``make`` in its row of :mod:`compress.kinds`: prune, quantize, every
export format) needs nothing here; the others (distill, bench, report, check) have a :class:`StageKind`
of their own. Verbs are imported when used, so a recipe without a distill section never imports the
distillation code (or torch's optimizers).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..kinds import KINDS
from ..manifest import content_id, file_digest, is_complete
from .checks import check_export, check_quantize
from .context import Context
from .recipe import Step


def _nothing_to_check(step: Step, ctx: Context) -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class StageKind:
    run: Callable[[Step, Context], Path]
    expected_id: Callable[[Step, Context], str | None]
    dry_check: Callable[[Step, Context], str] = _nothing_to_check


# ---- content ids: what the verb will write into its manifest, from the inputs' ids -------------------

def _single_input_id(step: Step, ctx: Context) -> str | None:
    src = ctx.id_of(step.inputs[0])
    return None if src is None else content_id(step.kind, step.config, src)


def _bench_input_id(step: Step, ctx: Context) -> str | None:
    """The bench run's input id, as compress.harness computes it: a hash of every target's artifact id
    (the reference's included). Only known once every input exists."""
    import hashlib

    from ..harness.targets import resolve_reference, resolve_target

    if any(not is_complete(ctx.path_of(k)) for k in step.inputs):
        return None
    targets = [resolve_target(f"{label}={ctx.path_of(k)}") for label, k in zip(step.extra["labels"], step.inputs)]
    ids = {t.artifact_id for t in targets}
    if step.config.include_reference:
        ref = resolve_reference(targets, step.config.reference)
        ref_path = Path(ref)
        ids.add(resolve_target(str(ref_path) if ref_path.exists() else ref, plain_folder=True).artifact_id)
    return hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()[:16]


def _bench_expected_id(step: Step, ctx: Context) -> str | None:
    input_id = _bench_input_id(step, ctx)
    return None if input_id is None else content_id("bench", step.config, input_id)


def _report_expected_id(step: Step, ctx: Context) -> str | None:
    ids = [ctx.id_of(k) for k in step.inputs]
    return None if None in ids else "report:" + "+".join(ids)


def _check_input_id(step: Step, ctx: Context) -> str | None:
    bench_id = ctx.id_of(step.inputs[0])
    baseline: Path = step.extra["baseline"]
    if bench_id is None or not baseline.is_file():
        return None
    return f"{bench_id}+baseline:{file_digest(baseline)[:16]}"


def _check_expected_id(step: Step, ctx: Context) -> str | None:
    input_id = _check_input_id(step, ctx)
    return None if input_id is None else content_id("check", step.config, input_id)


# ---- verbs -------------------------------------------------------------------------------------------

def _run_made(step: Step, ctx: Context) -> Path:
    """The one-input verb of the step's kind: ``make(input, config, out, force=...)``."""
    make = KINDS[step.kind].verb()
    return make(ctx.path_of(step.inputs[0]), step.config, step.out, force=ctx.force(step))


def _run_distill(step, ctx) -> Path:
    from ..distill import distill

    return distill(step.config, step.out, force=ctx.force(step))


def _run_bench(step, ctx) -> Path:
    from ..harness import bench

    specs = [f"{label}={ctx.path_of(k)}" for label, k in zip(step.extra["labels"], step.inputs)]
    return bench(step.config, specs, step.out, force=ctx.force(step))


def _run_report(step, ctx) -> Path:
    from ..harness import write_report

    paths = [write_report(ctx.path_of(k))["markdown"] for k in step.inputs]
    return paths[0]


def _run_check(step, ctx) -> Path:
    from ..harness import check
    from ..manifest import ArtifactWriter

    result = check(ctx.path_of(step.inputs[0]), step.extra["baseline"], step.config)
    with ArtifactWriter(step.out, stage="check", config=step.config, input_id=_check_input_id(step, ctx),
                        force=ctx.force(step), inputs=[ctx.path_of(step.inputs[0]), step.extra["baseline"]]) as art:
        (art.path / "check.txt").write_text(result.table() + "\n")
        art.report.update({"passed": bool(result.passed), "baseline": str(step.extra["baseline"]),
                           "bench": str(ctx.path_of(step.inputs[0]))})
    return step.out


# ---- dry-run checks (no weights) ---------------------------------------------------------------------

def _dry_bench(step, ctx) -> str:
    from ..harness import load_profile

    p = load_profile(step.config.profile)
    budget = f", memory budget {p.memory_budget_mb:.0f} MB" if p.memory_budget_mb else ""
    return f"profile {p.name}: {p.threads} threads{budget}"


def _dry_check(step, ctx) -> str:
    baseline: Path = step.extra["baseline"]
    if not baseline.is_file():
        raise ConfigError(f"check.baseline: {baseline} does not exist (write one with compress check RUN "
                          "--baseline FILE --update-baseline)")
    from ..harness.gate import load_baseline

    load_baseline(baseline)
    return f"baseline {baseline}"


# dry-run checks of the one-input kinds; every export format's architecture is checked the same way
_DRY_CHECKS: dict[str, Callable[[Step, Context], str]] = {"quantize": check_quantize}
STAGES: dict[str, StageKind] = {
    **{k.stage: StageKind(_run_made, _single_input_id,
                          _DRY_CHECKS.get(k.stage, check_export if k.export_format else _nothing_to_check))
       for k in KINDS.values() if k.make},
    "distill": StageKind(_run_distill, _single_input_id),
    "bench": StageKind(_run_bench, _bench_expected_id, _dry_bench),
    "report": StageKind(_run_report, _report_expected_id),
    "check": StageKind(_run_check, _check_expected_id, _dry_check),
}


def report_done(step: Step, ctx: Context) -> bool:
    """A report lives inside its bench run (run/report/report.md); a re-run bench is a new folder."""
    return all((ctx.path_of(k) / "report" / "report.md").is_file() for k in step.inputs)
