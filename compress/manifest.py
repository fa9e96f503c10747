"""Artifact directories: every stage output carries ``manifest.json`` and appears only when complete.

    with ArtifactWriter(out_dir, stage="fetch", config=cfg, input_id=src_id) as art:
        model.save_pretrained(art.path)
        art.report["perplexity"] = 12.3
    # out_dir now exists, with manifest.json written last

The writer fills a hidden sibling ``.NAME.tmp-PID-XXXXXXXX`` (NAME shortened to keep the name legal)
and renames it into place only after the manifest is written, so a crash, Ctrl-C or kill -9 never
leaves a directory under the final name. The manifest records file sizes, so a truncated file is
caught when the artifact is read back.

Before any work the output is checked against the stage's inputs (:func:`check_writable_target`):
it may not be, hold or sit inside one, and ``force`` replaces only one of our own artifacts holding
nothing but what its manifest lists.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .config import StageConfig
from .errors import ArtifactError
from .manifest_schema import check_types, unique_keys  # noqa: F401 - unique_keys is used by readers of JSON
from .outputs import check_no_overlap, resolved, sweep_stale_temps, temp_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_LIBRARIES = ("compress-llm", "torch", "transformers", "tokenizers", "safetensors", "gguf",
              "llama-cpp-python", "onnx", "onnxruntime", "numpy")


@dataclasses.dataclass
class Manifest:
    stage: str
    config: dict[str, Any]
    input_id: str | None
    content_id: str
    versions: dict[str, str]
    git_revision: str | None
    wall_time_s: float
    report: dict[str, Any]
    files: dict[str, int]
    created: str
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False, default=_json_default)


def content_id(stage: str, config: StageConfig | dict[str, Any], input_id: str | None) -> str:
    """Hash of stage + config + input id + compress version + the bytes of the data files the config
    names (its DATA_FIELDS) + in a checkout, a hash of the stage's own source (content.code_id): equal ids
    mean the same work on the same input and data by the same code (an artifact made by an older release
    or older code, or from a calibration text since edited, is not silently reused)."""
    from . import __version__
    from .content import code_id, data_ids

    cfg = config.to_dict() if isinstance(config, StageConfig) else config
    record = {"stage": stage, "config": cfg, "input": input_id, "code": __version__}
    data = data_ids(config)
    if data:  # only then: ids of stages reading bundled data stay what earlier releases wrote
        record["data"] = data
    source = code_id(config)
    if source:  # a checkout: the stage's own source, since the release number does not move with it
        record["source"] = source
    blob = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git revision of this compress checkout (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and check an artifact's manifest; ArtifactError names what is missing or corrupt."""
    d = Path(path)
    if not d.exists():
        raise ArtifactError(f"{d}: artifact does not exist")
    if not d.is_dir():
        raise ArtifactError(f"{d}: not an artifact directory")
    mf = d / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not a compress artifact, or an unfinished one)")
    try:
        raw = json.loads(mf.read_text(), object_pairs_hook=unique_keys)
        if isinstance(raw, dict) and isinstance(raw.get("schema"), int) and raw["schema"] > SCHEMA_VERSION:
            raise ArtifactError(f"{mf}: manifest schema {raw['schema']} is newer than this compress "
                                f"understands ({SCHEMA_VERSION}); upgrade compress")
        m = Manifest(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{mf}: corrupt manifest ({str(e).splitlines()[0]})") from None
    check_types(m, mf)
    if check_files:
        for name, size in m.files.items():
            f = d / name
            if not f.is_file():
                raise ArtifactError(f"{d}: corrupt artifact, {name} listed in the manifest is missing")
            actual = f.stat().st_size
            if actual != size:
                raise ArtifactError(f"{f}: corrupt artifact, {actual} bytes but the manifest says {size}")
    return m


def is_complete(path: str | Path, content: str | None = None) -> bool:
    """True when ``path`` holds a readable artifact (with the given content id, if one is given)."""
    try:
        m = read_manifest(path)
    except ArtifactError:
        return False
    return content is None or m.content_id == content


def reusable(out_dir: str | Path, *, stage: str, config: StageConfig, input_id: str | None,
             force: bool = False) -> bool:
    """True when ``out_dir`` already holds this work (same content id): the stage returns it instead of
    redoing it. ``force`` always redoes."""
    if force or input_id is None or not is_complete(out_dir, content_id(stage, config, input_id)):
        return False
    log.warning("%s already holds this %s (same content id): kept", out_dir, stage)
    return True


def precheck_output(out_dir: str | Path, *, force: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Before loading anything: refuse an output that can never be written. A complete artifact of ours
    is let through unless ``force``: whether it is reused or refused needs the input's id
    (:func:`reuse_or_check`, once the model is loaded)."""
    if force or not is_complete(out_dir):
        check_writable_target(Path(out_dir), force=force, inputs=inputs)


def reuse_or_check(out_dir: str | Path, *, stage: str, config: StageConfig, input_id: str | None,
                   force: bool = False, inputs: Iterable[str | Path | None] = ()) -> bool:
    """Every stage's one decision about its output: True = it already holds this work, reuse it; False =
    it may be written (empty, or ``force`` on one of our own artifacts); anything else is refused with
    ArtifactError - a stale artifact is never kept silently.

        if reuse_or_check(out, stage="quantize", config=cfg, input_id=lm.model_id, force=force):
            return out
        with ArtifactWriter(out, stage="quantize", config=cfg, input_id=lm.model_id, force=force) as art: ...
    """
    if reusable(out_dir, stage=stage, config=config, input_id=input_id, force=force):
        return True
    check_writable_target(Path(out_dir), force=force, inputs=inputs)
    return False


class ArtifactWriter:
    """Context manager that builds an artifact in a temporary sibling and renames it into place.

    Refuses an output that overlaps one of ``inputs`` (model/data arguments as the user gave them),
    and an existing non-empty ``out_dir`` unless ``force`` and it is one of our artifacts. On any
    exception (KeyboardInterrupt included) the temporary directory is removed and the exception
    propagates.
    """

    def __init__(self, out_dir: str | Path, *, stage: str, config: StageConfig, input_id: str | None,
                 force: bool = False, inputs: Iterable[str | Path | None] = ()):
        # resolved: with --out LINK the artifact goes where the link points and the link stays valid
        self.out_dir = resolved(out_dir)
        self.stage, self.config, self.input_id, self.force = stage, config, input_id, force
        self.inputs = list(inputs)
        self.content_id = content_id(stage, config, input_id)
        self.report: dict[str, Any] = {}
        self.path: Path = self.out_dir  # replaced by the temporary directory on enter
        self._t0 = 0.0

    def __enter__(self) -> ArtifactWriter:
        check_writable_target(self.out_dir, force=self.force, inputs=self.inputs)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.out_dir.parent)
        self.path = temp_name(self.out_dir, ".tmp-", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.path.mkdir()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _finish(self) -> None:
        from .finite import check_artifact_finite

        check_artifact_finite(self.path)  # an artifact of NaN/inf weights must never look complete
        files = {}
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and f.name != MANIFEST:
                files[f.relative_to(self.path).as_posix()] = f.stat().st_size
        m = Manifest(stage=self.stage, config=self.config.to_dict(), input_id=self.input_id,
                     content_id=self.content_id, versions=dict(library_versions()), git_revision=git_revision(),
                     wall_time_s=round(time.perf_counter() - self._t0, 3), report=self.report, files=files,
                     created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        _write_atomic(self.path / MANIFEST, m.to_json())
        if self.out_dir.exists():  # only reachable with force, on one of our artifacts (checked on enter)
            check_writable_target(self.out_dir, force=self.force, inputs=self.inputs)  # still ours, still no input
            trash = temp_name(self.out_dir, ".old-", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(self.out_dir, trash)
            try:
                os.rename(self.path, self.out_dir)
            except BaseException:  # the previous artifact goes back: a failed --force never loses it
                os.rename(trash, self.out_dir)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.path, self.out_dir)
        self.manifest = m
        log.info("wrote %s (%s)", self.out_dir, self.content_id)


def check_writable_target(out_dir: Path, *, force: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before any work, an output that would destroy data.

    ``inputs`` are every model, artifact and data argument of the stage (paths, bundled names,
    ``LABEL=PATH``): the output may not equal, contain or lie inside one. An existing non-empty output
    is replaced only with ``force``, and only when it is one of our artifacts (a readable manifest):
    a folder of the user's own files is never removed, whatever the flags."""
    try:  # found only after writing a whole GGUF before, and blamed on the file
        str(out_dir).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(out_dir)).decode("utf-8", "backslashreplace")
        raise ArtifactError(f"{shown}: the output path is not valid UTF-8; choose a name in UTF-8") from None
    check_no_overlap(out_dir, inputs)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ArtifactError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()):
            if not force:
                raise ArtifactError(f"{out_dir}: output directory exists and is not empty (use --force to replace it)")
            try:
                m = read_manifest(out_dir, check_files=False)  # a truncated weight file of ours may still be replaced
            except ArtifactError:
                raise ArtifactError(f"{out_dir}: output directory is not a compress artifact (no readable "
                                    f"{MANIFEST}); --force only replaces what compress wrote, so it is left "
                                    "untouched - choose another --out or empty it yourself") from None
            foreign = _files_not_ours(out_dir, m)
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise ArtifactError(f"{out_dir}: holds files compress did not write ({', '.join(foreign[:3])}{more}); "
                                    "--force would delete them, so the artifact is left untouched - move them "
                                    "out or choose another --out")


# folders a later command writes into a finished artifact of a stage (``compress report`` into a bench run)
_DERIVED = {"bench": ("report/",)}


def _files_not_ours(out_dir: Path, m: Manifest) -> list[str]:
    """Files (and links) in our artifact that its manifest does not list: someone else put them there."""
    derived = _DERIVED.get(m.stage, ())
    out = []
    for p in sorted(out_dir.rglob("*")):
        if p.is_symlink() or p.is_file():
            rel = p.relative_to(out_dir).as_posix()
            if rel != MANIFEST and rel not in m.files and not rel.startswith(derived):
                out.append(rel)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    """sha256 of a file, used as the input id of raw files such as GGUFs (cached: compress.content)."""
    from .content import file_hash

    return file_hash(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def lineage(path: str | Path, *, limit: int = 32) -> list[dict[str, Any]]:
    """The chain an artifact was made from, itself first: each link's path, stage, content id and input id,
    following ``report.input`` while it names an artifact of ours; the last link is the model or file
    that started it (``stage: "model"``, its id the first artifact's input id). ``compress info`` prints it,
    so a user can see which upstream content an id stands for."""
    chain: list[dict[str, Any]] = []
    p: Path | None = Path(path)
    while p is not None and len(chain) < limit:
        m = read_manifest(p, check_files=False)
        chain.append({"path": str(p), "stage": m.stage, "content_id": m.content_id, "input_id": m.input_id})
        src = m.report.get("input")
        p = Path(src) if isinstance(src, str) and (Path(src) / MANIFEST).is_file() else None
        if p is None and isinstance(src, str):
            chain.append({"path": src, "stage": "model", "content_id": m.input_id, "input_id": None})
    return chain
