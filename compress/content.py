"""Ids from content: weight files and data files are named by a hash of their bytes, never by their
path, size or name alone, so a file changed in place (weights retrained at the same size, a
calibration text edited) changes every content id downstream and re-runs what depends on it.

    folder_id(Path("my-model"))        # 'dir:3f2a...': config.json + every weight file's bytes
    file_hash(Path("model.gguf"))      # sha256 hex; streamed in 4 MB blocks
    data_ids(QuantConfig(calib="my.txt"))   # {'calib': 'sha256:...'}; bundled names are left out
    tree_digest(Path("genai-builder-out"))  # sha256 hex over every file's path and bytes

Hashing a 500 MB checkpoint takes about a second, and stages ask for the same ids many times
(plan, load, export), so digests are cached in ``$COMPRESS_CACHE/content-ids.json`` keyed by
(path, size, mtime_ns, inode): any write to the file changes at least one of those, and a second
look reads nothing but ``stat``. The cache is an optimisation only: unreadable or unwritable, it is
ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

CACHE_FILE = "content-ids.json"
_CHUNK = 1 << 22


def _cache_path() -> Path:
    from .bundled import cache_root

    return cache_root() / CACHE_FILE


def _stat_key(path: Path) -> tuple[str, list[int]]:
    st = path.stat()
    return str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_cache(where: Path) -> dict[str, Any]:
    try:
        data = json.loads(where.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(where: Path, key: str, value: list[Any]) -> None:
    """Merge one entry in; written to a temporary name and renamed, so concurrent processes never read
    half a file (one of two simultaneous updates may be lost: it is recomputed next time)."""
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(where)
        data[key] = value
        tmp = where.with_name(f".{where.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, where)
    except OSError as e:  # a read-only cache costs time, never a result
        log.debug("content-id cache not written (%s)", e)


def file_hash(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, from the cache when the file's size, mtime and inode are unchanged."""
    p = Path(path)
    key, stamp = _stat_key(p)
    try:
        where = _cache_path()
    except Exception:  # noqa: BLE001 - a misconfigured cache dir must not block hashing
        where = None
    if where is not None:
        hit = _read_cache(where).get(key)
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == stamp:
            return str(hit[3])
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    if where is not None:
        _write_cache(where, key, [*stamp, digest])
    return digest


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The folder's weight files: safetensors when it has any (what the loader reads), else pickles."""
    safetensors = tuple(sorted(folder.glob("*.safetensors")))
    if safetensors:
        return safetensors
    from .checkpoints import PICKLE_SUFFIXES  # the same files inspect_hf_folder would load

    return tuple(sorted(f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file()))


def folder_id(folder: str | Path, weights: Iterable[Path] | None = None) -> str:
    """The content id of a plain model folder (no manifest): its config.json and its weights' bytes."""
    folder = Path(folder)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for w in (weight_files(folder) if weights is None else weights):
        h.update(json.dumps([w.name, file_hash(w)]).encode())
    return "dir:" + h.hexdigest()[:16]


def path_id(spec: str | Path) -> str | None:
    """The content id of a data argument that names a file or folder; None for a bundled name (its name
    and the compress version, both already in every content id, say what it holds)."""
    p = Path(str(spec)).expanduser()
    if not str(spec) or not p.exists():
        return None
    if p.is_file():
        return "sha256:" + file_hash(p)[:16]
    return "sha256:" + tree_digest(p)[:16]


def tree_digest(folder: str | Path) -> str:
    """sha256 (hex) over every file under ``folder``: each one's relative path and bytes (a folder another tool
    wrote, with no manifest to name it, is identified by this)."""
    p = Path(folder)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(json.dumps([f.relative_to(p).as_posix(), file_hash(f)]).encode())
    return h.hexdigest()


def data_ids(config: Any) -> dict[str, Any]:
    """Content ids of the files a stage config names in its ``DATA_FIELDS`` (text, tasks), by field;
    fields that name only bundled data are left out, so their content ids stay what they were."""
    if isinstance(config, dict):  # a config's dict form gives the same ids as the config itself
        from .config import registered_configs

        cls = registered_configs().get(str(config.get("type")))
        fields, get = getattr(cls, "DATA_FIELDS", ()), config.get
    else:
        fields, get = getattr(type(config), "DATA_FIELDS", ()), lambda n, d=None: getattr(config, n, d)
    out: dict[str, Any] = {}
    for name in fields:
        value = get(name, None)
        if isinstance(value, (list, tuple)):
            ids = [path_id(v) for v in value]
            if any(ids):
                out[name] = ids
        elif value is not None:
            pid = path_id(value)
            if pid:
                out[name] = pid
    return out


def _source_checkout() -> bool:
    """Whether compress runs from a git checkout (code between releases) rather than an installed release."""
    return (Path(__file__).resolve().parents[1] / ".git").exists()


@functools.lru_cache(maxsize=None)
def _source_digest(where: str) -> str:
    p = Path(where)
    files = sorted(p.glob("*.py")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps([f.name, hashlib.sha256(f.read_bytes()).hexdigest()]).encode())
    return h.hexdigest()[:16]


def code_id(config: Any) -> str | None:
    """Hash of the stage's own source (the package of its config class: compress/quantize/*.py for
    quantize, export/gguf/*.py for a GGUF export) when running from a checkout, where the release number
    does not move with the code: a changed default or a fixed bug re-runs the stage instead of reusing
    what the old code made. None for an installed release (its version number says it all)."""
    if not _source_checkout():
        return None
    if isinstance(config, dict):
        from .config import registered_configs

        cls = registered_configs().get(str(config.get("type")))
    else:
        cls = type(config)
    if cls is None:
        return None
    import importlib

    mod = importlib.import_module(cls.__module__)
    f = Path(mod.__file__ or "")
    # a config in a stage package (compress/quantize/config.py) stands for the package; a lone module for itself
    return _source_digest(str(f.parent if f.parent.name != "compress" or f.name == "__init__.py" else f))
