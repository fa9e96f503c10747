"""Where a stage may write: outputs never overlap inputs, temporaries are short and swept.

    paths = input_paths("smollm2-135m")           # [<cache>/models/smollm2-135m, <package folder>]
    check_no_overlap(Path("out/q4"), ["runs/fp32", "calib.txt"])   # ArtifactError if they overlap

A user typed ``compress export ART --out ART --force`` and lost ART: the writer replaced the output,
which was also the input. Every stage therefore resolves its output and every input (symlinks
followed) before any work and refuses an output that equals, contains or lies inside an input.
Inputs are given as the user gave them (a folder, a file, a bundled name, ``LABEL=PATH``); names
that are no local path (hub ids, bundled text names) hold nothing we could delete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from .errors import ArtifactError

# A file name may have at most 255 bytes (NAME_MAX on Linux and macOS); our hidden sibling adds
# ".", ".tmp-PID-xxxxxxxx": a legal 240-byte output name must not become an illegal temp name.
_NAME_MAX = 255
# exactly what temp_name(out, ".tmp-"/".old-", f"{pid}-{uuid8}") makes: a user's own hidden files never match
_TEMP_RE = re.compile(r"\..+\.(?:tmp|old)-(\d+)-[0-9a-f]{8}")


def resolved(path: str | Path) -> Path:
    """``Path.resolve()`` with a symlink loop (a RuntimeError in Python 3.11, OSError later) as one line."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise ArtifactError(f"{path}: cannot tell where it points (a symlink loop?): {e}") from None


def input_paths(spec: str | Path | None) -> list[Path]:
    """The local paths (resolved) that a model/data/artifact argument reads; [] when none."""
    if spec is None or str(spec) == "":
        return []
    s = str(spec)
    p = Path(s).expanduser()
    if not p.exists() and "=" in s and not isinstance(spec, Path):  # bench's LABEL=PATH
        return input_paths(s.partition("=")[2])
    if p.exists() or p.is_symlink() or isinstance(spec, Path):  # a Path is a place even before it exists
        found = [resolved(p)]
        if p.is_dir():  # a snapshot folder of links (the hub cache's layout): the files they point at count too
            try:
                found += [resolved(c) for c in p.iterdir() if c.is_symlink()]
            except OSError:
                pass
        return found
    from .bundled import BUNDLED, cache_root

    if s in BUNDLED:
        import importlib.util

        found = [resolved(cache_root() / "models" / s), resolved(cache_root() / "gguf")]  # gemma assembles there
        pkg = importlib.util.find_spec(BUNDLED[s].package)  # finds, does not import
        if pkg is not None and pkg.submodule_search_locations:
            found.append(resolved(pkg.submodule_search_locations[0]))
        return found
    return []


def check_no_overlap(out_dir: str | Path, inputs: Iterable[str | Path | None], *, what: str = "output",
                     option: str = "--out", against: str = "input") -> None:
    """Raise ArtifactError when ``out_dir`` equals, contains or lies inside one of ``inputs``."""
    out = resolved(out_dir)
    for spec in inputs:
        for inp in input_paths(spec):
            if out == inp:
                rel = f"is the {against}"
            elif inp.is_relative_to(out):
                rel = f"contains the {against}"
            elif out.is_relative_to(inp):
                rel = f"lies inside the {against}"
            else:
                continue
            shown = f" {spec} ({inp})" if str(spec) != str(inp) else f" {inp}"
            raise ArtifactError(f"{out_dir}: the {what} {rel}{shown}; writing there would destroy it "
                                f"- choose another {option}")


def write_text_output(path: str | Path, text: str, *, inputs: Iterable[str | Path | None],
                      option: str = "--save-config") -> Path:
    """Write a small file the user named (a saved config, a baseline) unless it would overwrite or land
    inside an input: `--save-config MODEL/config.json` replaced the model's own config."""
    p = Path(path)
    check_no_overlap(p, inputs, what=f"{option} file", option=option)
    if p.is_dir():
        raise ArtifactError(f"{p}: is a directory, expected a file for {option}")
    p.write_text(text)
    return p


def temp_name(out_dir: Path, tag: str, suffix: str) -> Path:
    """``.NAME.tmp-SUFFIX`` beside ``out_dir``, NAME shortened so the whole stays a legal file name."""
    tail = f"{tag}{suffix}"
    room = _NAME_MAX - 1 - len(tail.encode())
    name = out_dir.name.encode()[:room].decode("utf-8", errors="ignore")
    return out_dir.parent / f".{name}{tail}"


def sweep_stale_temps(parent: Path) -> list[Path]:
    """Remove our temporaries in ``parent`` whose process is gone (kill -9 leaves them behind).

    Only hidden names of our pattern (``.X.tmp-PID-HEX8`` / ``.X.old-PID-HEX8``) with a dead PID are
    touched; anything else, and anything of a live process, is left alone. Returns what was removed."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        pid = _temp_pid(p.name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _temp_pid(name: str) -> int | None:
    m = _TEMP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a PID we wrote: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
