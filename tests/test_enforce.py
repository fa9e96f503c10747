"""Profiles are enforced by the operating system: an over-budget process fails as on the device."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compress.harness.enforce import Child, Limits
from runtimes.base import DeviceProfile

_ALLOC = "import numpy as np; a = np.ones({mb} << 18, dtype=np.float32); print(float(a[::4096].sum()))"


def _run(limits: Limits, mb: int) -> tuple[subprocess.CompletedProcess, Child]:
    with limits.applied() as child:
        proc = subprocess.run([sys.executable, "-c", _ALLOC.format(mb=mb)], capture_output=True, text=True,
                              preexec_fn=child.enter, timeout=120)
    return proc, child


def test_process_over_the_budget_fails_and_the_verdict_names_the_profile():
    limits = Limits.for_profile(DeviceProfile(name="tiny-phone", threads=1, memory_budget_mb=200))
    proc, child = _run(limits, mb=400)
    assert proc.returncode != 0
    why = child.verdict(proc.returncode, proc.stderr)
    assert why is not None and "'tiny-phone'" in why and child.mechanism in why and "200 MB" in why


def test_process_within_the_budget_runs_and_has_no_verdict():
    limits = Limits.for_profile(DeviceProfile(name="phone", threads=1, memory_budget_mb=1024))
    proc, child = _run(limits, mb=100)
    assert proc.returncode == 0, proc.stderr
    assert child.verdict(proc.returncode, proc.stderr) is None
    assert child.mechanism != "none"


def test_cores_are_pinned_and_clamped_to_the_machine():
    import os

    n = len(os.sched_getaffinity(0))
    limits = Limits.for_profile(DeviceProfile(name="big", threads=n + 6))
    assert len(limits.cores) == n and limits.notes and "pinned" in limits.notes[0]
    with limits.applied() as child:
        out = subprocess.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"],
                             capture_output=True, text=True, preexec_fn=child.enter, check=True)
    assert int(out.stdout) == n
    one = Limits.for_profile(DeviceProfile(name="one", threads=1))
    with one.applied() as child:
        out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                             capture_output=True, text=True, preexec_fn=child.enter, check=True)
    assert out.stdout.strip() == str([min(os.sched_getaffinity(0))])


def test_no_budget_means_no_limit_and_no_verdict():
    limits = Limits.for_profile(DeviceProfile(name="laptop", threads=1))
    with limits.applied() as child:
        assert child.mechanism == "none" and child.verdict(-9, "") is None


@pytest.mark.parametrize("mb", [300])
def test_rlimit_fallback_also_refuses_an_over_budget_process(mb, monkeypatch):
    from compress.harness import enforce

    monkeypatch.setattr(enforce, "_make_cgroup", lambda limit_mb: None)
    limits = Limits.for_profile(DeviceProfile(name="p", threads=1, memory_budget_mb=150))
    proc, child = _run(limits, mb=mb)
    assert child.mechanism == "RLIMIT_DATA" and proc.returncode != 0
    assert "RLIMIT_DATA" in child.verdict(proc.returncode, proc.stderr)


def test_a_process_can_hold_itself_to_a_profile_and_is_killed_past_it():
    code = ("import numpy as np, sys\n"
            "from compress.harness.enforce import apply_to_self\n"
            "from runtimes.base import DeviceProfile\n"
            "c = apply_to_self(DeviceProfile(name='p', threads=1, memory_budget_mb=int(sys.argv[1])))\n"
            "print(c.mechanism, flush=True)\n"
            "a = np.ones(300 << 18, dtype=np.float32); print('survived', float(a[::4096].sum()))\n")
    over = subprocess.run([sys.executable, "-c", code, "150"], capture_output=True, text=True, timeout=120)
    assert over.returncode != 0 and "survived" not in over.stdout
    fine = subprocess.run([sys.executable, "-c", code, "1500"], capture_output=True, text=True, timeout=120)
    assert fine.returncode == 0 and "survived" in fine.stdout, fine.stderr
