"""Run a process the way a device would: pinned to the profile's cores, inside its memory budget.

    lim = Limits.for_profile(profile)           # cores clamped to this machine's, said in ``lim.notes``
    with lim.applied() as child:                # a memory cgroup made for this run (removed after)
        subprocess.run(cmd, preexec_fn=child.enter)
    child.verdict(returncode)                   # "killed by the memory limit ..." or None

Mechanisms, first that works: a cgroup v2 ``memory.max``, a cgroup v1 ``memory.limit_in_bytes`` (both
count what the kernel charges the process: heap, and file pages it maps, which it reclaims under the
limit before it kills, as a phone's low-memory killer would), else ``RLIMIT_DATA`` (anonymous memory
only; a mapped GGUF is not counted). The row says which one held the budget. Swap is off inside a cgroup
(``memory.swap.max = 0`` / ``memsw``) so an over-budget run fails instead of paging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import signal
import uuid
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_V2_ROOT = Path("/sys/fs/cgroup")


@dataclasses.dataclass
class Child:
    """What the child process does before exec, and how its end is read."""

    mechanism: str  # "cgroup-v2 memory.max" | "cgroup-v1 memory.limit_in_bytes" | "RLIMIT_DATA" | "none"
    limit_mb: float | None
    cores: tuple[int, ...]
    procs_file: Path | None = None
    events_file: Path | None = None
    profile: str = ""

    def enter(self) -> None:
        """In the child, before exec: join the cgroup (or set the rlimit), pin the cores."""
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        if self.procs_file is not None:
            self.procs_file.write_text(str(os.getpid()))
        elif self.mechanism == "RLIMIT_DATA" and self.limit_mb:
            limit = int(self.limit_mb * (1 << 20))
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    def oom_kills(self) -> int:
        """The cgroup's count of processes the kernel killed for memory (``oom_kill N`` in v2's
        memory.events and in v1's memory.oom_control on current kernels)."""
        text = _read(self.events_file) if self.events_file is not None else ""
        return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("oom_kill ")), 0)

    def verdict(self, returncode: int, error_text: str = "") -> str | None:
        """Why the run failed in a way the budget explains, or None."""
        if self.limit_mb is None:
            return None
        killed = returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or self.oom_kills() > 0
        memory_error = "MemoryError" in error_text or "bad_alloc" in error_text or "Cannot allocate" in error_text \
            or "failed to allocate" in error_text.lower()
        if killed or memory_error:
            how = "killed" if killed else "out of memory"
            return (f"over profile {self.profile!r}'s memory budget: {how} under {self.mechanism} = "
                    f"{self.limit_mb:.0f} MB")
        return None


@dataclasses.dataclass
class Limits:
    memory_mb: float | None
    cores: tuple[int, ...]
    notes: list[str]
    profile: str = ""

    @classmethod
    def for_profile(cls, profile) -> "Limits":
        """The profile's budget and cores (its thread count, clamped to the cores this process may use)."""
        avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        notes = []
        want = int(profile.threads)
        cores = tuple(avail[:want]) if avail else ()
        if avail and want > len(avail):
            notes.append(f"profile {profile.name!r} asks for {want} cores; this machine gives {len(avail)}, "
                         f"pinned to {len(avail)}")
        return cls(profile.memory_budget_mb, cores, notes, profile.name)

    @contextlib.contextmanager
    def applied(self) -> Iterator[Child]:
        if self.memory_mb is None:
            yield Child("none", None, self.cores, profile=self.profile)
            return
        group = _make_cgroup(self.memory_mb)
        if group is None:
            yield Child("RLIMIT_DATA", self.memory_mb, self.cores, profile=self.profile)
            return
        mechanism, path, procs, events = group
        try:
            yield Child(mechanism, self.memory_mb, self.cores, procs, events, self.profile)
        finally:
            _remove_cgroup(path)


def apply_to_self(profile) -> Child:
    """Hold this very process to ``profile`` (chat: the model runs in-process): pin its cores and move it
    into a memory cgroup of the budget (or set RLIMIT_DATA). The cgroup is removed at exit, after the
    process has moved back to its parent group."""
    import atexit

    limits = Limits.for_profile(profile)
    for note in limits.notes:
        log.info(note)
    if limits.memory_mb is None:
        child = Child("none", None, limits.cores, profile=limits.profile)
        child.enter()
        return child
    group = _make_cgroup(limits.memory_mb)
    if group is None:
        child = Child("RLIMIT_DATA", limits.memory_mb, limits.cores, profile=limits.profile)
        child.enter()
        return child
    mechanism, path, procs, events = group
    child = Child(mechanism, limits.memory_mb, limits.cores, procs, events, limits.profile)
    child.enter()

    def leave() -> None:
        with contextlib.suppress(OSError):
            (path.parent / "cgroup.procs").write_text(str(os.getpid()))
        _remove_cgroup(path)

    atexit.register(leave)
    return child


def _make_cgroup(limit_mb: float) -> tuple[str, Path, Path, Path] | None:
    """A fresh memory cgroup under this process's own, limited to ``limit_mb``; None where we may not."""
    limit = str(int(limit_mb * (1 << 20)))
    name = f"compress-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    for version, parent in _own_memory_cgroups():
        _sweep(parent)
        path = parent / name
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            if version == 2:
                (path / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
                return "cgroup-v2 memory.max", path, path / "cgroup.procs", path / "memory.events"
            (path / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(limit)
            return "cgroup-v1 memory.limit_in_bytes", path, path / "cgroup.procs", path / "memory.oom_control"
        except OSError as e:
            log.debug("cgroup %s unusable: %s", path, e)
            _remove_cgroup(path)
    return None


def _sweep(parent: Path) -> None:
    """Remove our groups left by processes that are gone (a process the budget killed cannot clean up)."""
    for p in parent.glob("compress-*-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove_cgroup(p)
        except PermissionError:
            pass


def _own_memory_cgroups() -> list[tuple[int, Path]]:
    """(version, directory) of the memory cgroup(s) this process is in, v2 first."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    mounts = _cgroup_mounts()
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "" and "cgroup2" in mounts:
            base = mounts["cgroup2"] / rel.lstrip("/")
            if "memory" in _read(base / "cgroup.subtree_control").split():
                out.insert(0, (2, base))
        elif "memory" in controllers.split(",") and "memory" in mounts:
            out.append((1, mounts["memory"] / rel.lstrip("/")))
    return out


def _cgroup_mounts() -> dict[str, Path]:
    out: dict[str, Path] = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, opts = line.split()[:4]
            if fstype == "cgroup2":
                out.setdefault("cgroup2", Path(mnt))
            elif fstype == "cgroup" and "memory" in opts.split(","):
                out["memory"] = Path(mnt)
    except OSError:
        pass
    return out


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _remove_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()  # empty once its process has exited
