"""The runtime harness (issue #5): bench artifacts on every runtime, report, and gate regressions in CI.

    from compress.harness import BenchConfig, bench, write_report, CheckConfig, check, load_profile
    run = bench(BenchConfig(profile="phone"), ["runs/q4_0", "runs/onnx-int4"], "runs/bench-phone")
    write_report(run)                                   # run/report/report.{md,html} + PNG plots
    result = check(run, "baseline.json", CheckConfig()) # result.passed, result.table()

Modules in the order a bench run flows: :mod:`.config` and :mod:`.profiles` (what to run, on what
device), :mod:`.targets` (artifacts and the runtimes their kind names), :mod:`.runner` (the run;
:mod:`.accuracy` in process, :mod:`.worker` per runtime in a pinned process via :mod:`.enforce`,
:mod:`.roofline`), :mod:`.tables`, :mod:`.labels` and :mod:`.report` (what it shows), :mod:`.gate`
(``check`` against a baseline) and :mod:`.cli`.

Names are imported lazily: the latency worker (``python -m compress.harness.worker``) runs in this
package, and a llama.cpp worker must not pay torch's import in its peak RSS.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BenchConfig": ".config", "CheckConfig": ".config",
    "bench": ".runner", "read_rows": ".runner",
    "write_report": ".report",
    "check": ".gate", "CheckResult": ".gate", "write_baseline": ".gate", "load_baseline": ".gate",
    "load_profile": ".profiles", "list_profiles": ".profiles",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
