"""Device profiles: YAML files naming a device class's threads and budgets.

    load_profile("phone")                  # a shipped profile (compress/profiles/phone.yaml)
    load_profile("./my-tablet.yaml")       # any file with the same keys
    list_profiles()                        # {"laptop": Path(...), ...}, $COMPRESS_PROFILES included

A directory named in ``$COMPRESS_PROFILES`` (``os.pathsep``-separated) adds its ``*.yaml`` files; a
user's file with a shipped name wins. Budgets are MB; ``null`` means no limit.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


from compress.config import read_yaml_file, suggest
from compress.errors import ConfigError
from compress.finite import is_finite_number
from runtimes.base import DeviceProfile

SHIPPED = Path(__file__).resolve().parent.parent / "profiles"
_KEYS = {"name", "description", "threads", "memory_budget_mb", "storage_budget_mb", "preferred_runtime"}


def list_profiles() -> dict[str, Path]:
    """Profile name -> file, shipped ones first, then ``$COMPRESS_PROFILES`` directories."""
    dirs = [SHIPPED] + [Path(d) for d in os.environ.get("COMPRESS_PROFILES", "").split(os.pathsep) if d]
    out: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                out[f.stem] = f
    return out


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A profile by name (see :func:`list_profiles`) or from a YAML file path; ConfigError otherwise."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    known = list_profiles()
    if s in known:
        p = known[s]
    elif not (p.suffix in (".yaml", ".yml") or p.exists()):
        raise ConfigError(f"unknown profile {s!r}{suggest(s, known)}; known: {', '.join(known)} "
                          "(or give a path to a YAML file)")
    data = read_yaml_file(p, "profile file")
    return profile_from_dict(data, where=str(p), default_name=p.stem)


def profile_from_dict(data: Any, *, where: str, default_name: str = "custom") -> DeviceProfile:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a profile is a mapping of {', '.join(sorted(_KEYS))}")
    for k in data:
        if k not in _KEYS:
            raise ConfigError(f"{where}: unknown key {k!r}{suggest(k, _KEYS)}; valid keys: {', '.join(sorted(_KEYS))}")
    threads = data.get("threads", 2)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{where}: threads must be a positive integer, got {threads!r}")
    budgets = {}
    for k in ("memory_budget_mb", "storage_budget_mb"):
        v = data.get(k)
        # not `v <= 0` alone: .nan passes it and then every `fits` comparison is False (no guard at all)
        if v is not None and (not is_finite_number(v) or v <= 0):
            raise ConfigError(f"{where}: {k} must be a positive finite number of MB or null, got {v!r}")
        budgets[k] = None if v is None else float(v)
    return DeviceProfile(name=str(data.get("name", default_name)), threads=threads,
                         preferred_runtime=str(data.get("preferred_runtime", "pytorch")), **budgets)


def effective_threads(profile: DeviceProfile) -> tuple[DeviceProfile, str]:
    """The profile with threads clamped to this machine's cores, and a note when that changed it:
    4 threads on 2 cores would time the OS scheduler, not the runtime."""
    cores = os.cpu_count() or 1
    if profile.threads <= cores:
        return profile, ""
    return (dataclasses.replace(profile, threads=cores),
            f"profile asks for {profile.threads} threads; this machine has {cores} cores, ran {cores}")


def verdicts(profile: DeviceProfile, file_mb: float | None, peak_rss_mb: float | None) -> dict[str, bool | None]:
    """Whether an artifact fits the profile's storage and memory budgets (None: no budget or no figure)."""
    def fits(value, budget):
        return None if value is None or budget is None else bool(value <= budget)

    return {"fits_storage": fits(file_mb, profile.storage_budget_mb),
            "fits_memory": fits(peak_rss_mb, profile.memory_budget_mb)}
