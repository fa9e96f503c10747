"""What bench measures: artifacts resolved from their manifests into (label, id, size, runtimes).

    t = resolve_target("q4=runs/smol-q4_0")     # LABEL=PATH, a path, a .gguf file or a bundled name
    t.loaders                                   # {"llama.cpp": ".../runs/smol-q4_0", "pytorch": ".../model.Q4_0.gguf"}
    t.native                                    # "llama.cpp": what bench runs unless told otherwise

Ids, stages and file sizes come from manifests, never from guesses; a folder without one is refused, unless
it is a folder another tool wrote that :data:`compress.kinds.FOREIGN` recognises (onnxruntime-genai's model
builder output: ``builder=runs/genai-builder``): its id is a hash of its bytes, its size its weight files', and
it has no lineage, so bench needs ``--reference`` for it. Which runtimes run an artifact, and what each one
loads, is its kind's row in :mod:`compress.kinds`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from compress.content import folder_id, tree_digest
from compress.errors import ArtifactError, ConfigError
from compress.kinds import FOREIGN, KINDS, ForeignKind, foreign_kind, resolve
from compress.manifest import MANIFEST, Manifest, file_digest, read_manifest

# files whose bytes a device has to store; tokenizer and config files are left out (Gemma's
# tokenizer.json alone is 33 MB and is the same for every artifact)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".data", ".bin", ".ort")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    label: str
    spec: str  # as given (path or bundled name)
    stage: str  # the manifest's stage, or "gguf-file"
    artifact_id: str
    file_bytes: int
    loaders: dict[str, str]  # runtime -> what that runtime loads; first entry is the native runtime
    source: str | None  # bundled name of the model it was made from, when the manifests tell
    foreign: str | None = None  # the tool that wrote a folder without a manifest (a compress.kinds.FOREIGN row)

    @property
    def native(self) -> str:
        return next(iter(self.loaders))


def split_label(spec: str) -> tuple[str | None, str]:
    """``LABEL=PATH`` -> (LABEL, PATH); a plain spec -> (None, spec)."""
    label, sep, rest = str(spec).partition("=")
    if sep and label and "/" not in label and not Path(spec).exists():
        return label, rest
    return None, str(spec)


def resolve_target(spec: str | Path, *, plain_folder: bool = False) -> Target:
    """``plain_folder``: accept a Hugging Face folder without a manifest (the reference may be one); its id
    is a hash of its config and weight file sizes."""
    from compress.bundled import BUNDLED

    label, s = split_label(str(spec))
    p = Path(s).expanduser()
    if not p.exists() and s in BUNDLED:
        from compress.fetch import ensure_fetched

        folder = ensure_fetched(s)
        m = read_manifest(folder)
        return Target(label or s, s, m.stage, m.content_id, weight_bytes(m, folder), {"pytorch": s}, s)
    if not p.exists():
        raise ArtifactError(f"{s}: artifact does not exist (bundled names: {', '.join(BUNDLED)})")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ArtifactError(f"{p}: not an artifact directory or a .gguf file")
        return Target(label or p.stem, s, "gguf-file", "gguf:" + file_digest(p)[:16], p.stat().st_size,
                      {"llama.cpp": str(p), "pytorch": str(p)}, None)
    if not (p / MANIFEST).is_file() and not (plain_folder and (p / "config.json").is_file()):
        foreign = foreign_kind(p)
        if foreign is not None:
            return _foreign_target(foreign, p, label, s)
    if not (p / MANIFEST).is_file() and plain_folder:
        if not (p / "config.json").is_file():
            raise ArtifactError(f"{p}: no config.json and no {MANIFEST}; not a model folder")
        files = {f.name: f.stat().st_size for f in sorted(p.iterdir()) if f.is_file()}
        size = sum(v for k, v in files.items() if k.endswith(_WEIGHT_SUFFIXES))
        # the id load_model gives the folder: the weights' bytes, so a retrained folder is a new target
        return Target(label or p.name, s, "folder", folder_id(p), size, {"pytorch": str(p)}, None)
    if not (p / MANIFEST).is_file():
        others = "".join(f", or a folder {k.made_by} wrote (it holds {k.marker})" for k in FOREIGN)
        raise ArtifactError(f"{p}: no {MANIFEST}; bench reads artifact ids and sizes from manifests, so it takes "
                            f"what compress wrote (fetch, quantize, export), a .gguf file{others}")
    m = read_manifest(p)
    kind = KINDS.get(m.stage)
    if kind is not None and not kind.is_model:
        raise ArtifactError(f"{p}: a {m.stage} run directory, not a model artifact")
    # the runtimes of the kind's row; a stage the table does not know is a transformers folder
    loaders = kind.runtime_paths(p, m.report) if kind is not None else {"pytorch": str(p)}
    return Target(label or p.name, s, m.stage, m.content_id, weight_bytes(m, p), loaders, source_model(m))


def _foreign_target(kind: ForeignKind, folder: Path, label: str | None, spec: str) -> Target:
    """A folder of a FOREIGN row: validated and described by the row's ``inspect``, identified by its bytes."""
    report = resolve(kind.inspect)(folder)
    if report.get("our_loop_refused"):
        log.info("%s: runs in %s only: %s", folder, kind.runs[0].runtime, report["our_loop_refused"])
    return Target(label or folder.name, spec, kind.name, f"{kind.name}:{tree_digest(folder)[:16]}",
                  sum(report["weight_files"].values()), kind.runtime_paths(folder, report), None, kind.made_by)


def weight_bytes(m: Manifest, folder: Path) -> int:
    """Bytes of the weight files the manifest lists (for an ONNX export with a mobile .ort copy, only the
    model file it loads)."""
    skip = {m.report["ort_file"]} if m.report.get("ort_file") else set()
    return sum(size for name, size in m.files.items() if name.endswith(_WEIGHT_SUFFIXES) and name not in skip)


def source_model(m: Manifest, depth: int = 0) -> str | None:
    """The bundled model an artifact descends from, following ``input`` back through manifests."""
    from compress.bundled import BUNDLED
    from compress.fetch import cached_folder
    from compress.manifest import is_complete

    if m.stage == "fetch":
        return m.config.get("name")
    inp = m.report.get("input")
    if isinstance(inp, str):
        if inp in BUNDLED and not Path(inp).exists():
            return inp
        q = Path(inp)
        if depth < 8 and q.is_dir() and (q / MANIFEST).is_file():
            return source_model(read_manifest(q, check_files=False), depth + 1)
    for name in BUNDLED:  # an input id equal to a cached bundled model's content id
        folder = cached_folder(name)
        if (folder / MANIFEST).is_file() and is_complete(folder) and read_manifest(folder).content_id == m.input_id:
            return name
    return None


def select_runtimes(target: Target, wanted: tuple[str, ...]) -> list[str]:
    """The runtimes bench runs on ``target``: its native one, or those of ``wanted`` that can load it."""
    if not wanted:
        return [target.native]
    return [r for r in wanted if r in target.loaders]


def resolve_reference(targets: list[Target], reference: str | None) -> str:
    if reference:
        return reference
    for t in targets:  # a folder another tool wrote names no model it came from: guessing one would mislead
        if t.foreign:
            raise ConfigError(f"{t.spec}: a folder {t.foreign} wrote has no {MANIFEST} to name the model it was made "
                              "from; pass --reference MODEL (that model: a bundled name or its folder)")
    # plain .gguf files carry no lineage: they follow the one model the other artifacts name (a GGUF of
    # another model then fails the logits shape check against the reference)
    known = sorted({t.source for t in targets if t.source})
    if len(known) == 1:
        return known[0]
    why = (f"the artifacts come from different models ({', '.join(known)})" if len(known) > 1 else
           "their manifests do not lead back to a bundled model")
    raise ConfigError(f"cannot tell which reference to compare with: {why}; pass --reference MODEL")
