"""Every kind of artifact, in one table: the stage that writes it, its config, how PyTorch loads it,
the runtimes that run it (native first, and the file each one loads), and the export format it is.

    kind = KINDS["export-gguf"]
    kind.config_class()                       # export.gguf.config.GGUFConfig, imported on first use
    kind.native                               # "llama.cpp": what bench runs unless told otherwise
    kind.runtime_paths(folder, m.report)      # {"llama.cpp": folder, "pytorch": folder/"model.Q4_0.gguf"}
    by_format("onnx").stage                   # "export-onnx"

Everything that lists kinds reads this table: model loading (:mod:`compress.models`), the recipe's
export formats and config classes, the pipeline's stage table and its dry run's export checks,
``compress export --format``, bench's runtimes (:mod:`compress.harness.targets`), chat's backends (by the
native runtime) and diagnose. Adding a kind of artifact is one row.

References to code are ``"module:attribute"`` strings, imported when first used, as packaging's entry
points are: the table names the code of every layer without importing any of it, so ``compress --help``
stays light, an install without one stage still loads the others' artifacts, and no lower layer imports
a stage to learn about it. This module is the one place such strings live; tests/test_kinds.py resolves
every one and sends an artifact of every kind through its loader, its runtimes and the exports.

Folders other tools wrote, which bench measures beside ours (onnxruntime-genai's model builder output: the
peer row), are the second, smaller table, :data:`FOREIGN`: no manifest, so no stage, config or lineage; a
marker file recognises them, and the row's ``inspect`` validates the folder and says what a manifest would
(the file each runtime loads, the weight files). Bench takes their content id from their bytes and needs
``--reference`` for them.

    foreign_kind(Path("runs/genai-builder"))    # FOREIGN row "genai-folder": it holds genai_config.json
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Runs:
    """One runtime that runs a kind's artifacts, and what it is given."""

    runtime: str  # a name runtimes/ registers
    file: str | None = None  # the report key naming the file it loads; None: the artifact folder
    when: str | None = None  # a report key that must be set for this runtime to apply (an optional file)


PYTORCH = (Runs("pytorch"),)


@dataclasses.dataclass(frozen=True)
class ArtifactKind:
    stage: str  # the manifest's stage name, and the config's ``type``
    config: str  # "module:Class" of the stage's frozen config
    make: str | None = None  # the verb make(input, config, out, *, force) -> Path, where it takes one input
    loader: str | None = None  # PyTorch loader (folder, manifest) -> LoadedModel; None: a transformers folder
    runs: tuple[Runs, ...] = PYTORCH  # () for outputs that are not models (bench runs, checks)
    export_format: str | None = None  # ``compress export --format`` / a recipe's ``format:``
    export_cli: str | None = None  # the handler of ``compress export --format`` (an ExportRequest)
    # what a recipe's ``--dry-run`` checks of an export step from config.json alone, no weights read:
    # (config, model folder, config.json dict) -> a note; IncompatibleLayerError when the format cannot take it
    dry_run: str | None = None

    def config_class(self) -> type:
        return resolve(self.config)

    def verb(self):
        return resolve(self.make) if self.make else None

    @property
    def is_model(self) -> bool:
        return bool(self.runs)

    @property
    def native(self) -> str | None:
        return self.runs[0].runtime if self.runs else None

    def runtime_paths(self, folder: Path, report: Mapping[str, Any]) -> dict[str, str]:
        """runtime -> the path it loads for the artifact in ``folder``, native runtime first."""
        return _runtime_paths(self.runs, folder, report)


def _runtime_paths(runs: tuple[Runs, ...], folder: Path, report: Mapping[str, Any]) -> dict[str, str]:
    return {r.runtime: str(folder / report[r.file] if r.file else folder) for r in runs
            if r.when is None or report.get(r.when)}


# Commands whose settings are configs but which write no artifact of their own (``runs=()``) are rows too,
# so that every config ``type`` a file may hold is found here.
_ROWS = (
    ArtifactKind("fetch", "compress.fetch:FetchConfig"),
    ArtifactKind("import-gguf", "compress.fetch:ImportConfig"),
    ArtifactKind("prune", "compress.prune.config:PruneConfig", make="compress.prune.run:prune"),
    ArtifactKind("distill", "compress.distill.config:DistillConfig"),
    ArtifactKind("quantize", "compress.quantize.config:QuantConfig", make="compress.quantize.run:run_quantize",
                 loader="compress.quantize.artifact:load_quantized"),
    ArtifactKind("export-gguf", "export.gguf.config:GGUFConfig", make="export.gguf.export:export_gguf",
                 runs=(Runs("llama.cpp"), Runs("pytorch", file="gguf_file")),
                 export_format="gguf", export_cli="export.gguf.cli:run", dry_run="export.gguf.arch:dry_run_note"),
    ArtifactKind("export-onnx", "export.onnx.config:OnnxConfig", make="export.onnx.export:export_onnx",
                 runs=(Runs("onnxruntime"), Runs("onnxruntime-genai", when="genai_config")),
                 export_format="onnx", export_cli="export.onnx.cli:run", dry_run="export.onnx.arch:dry_run_note"),
    ArtifactKind("bench", "compress.harness.config:BenchConfig", runs=()),
    ArtifactKind("check", "compress.harness.config:CheckConfig", runs=()),
    ArtifactKind("eval", "compress.evaluate:EvalConfig", runs=()),
    ArtifactKind("diagnose", "compress.diagnose.config:DiagnoseConfig", runs=()),
    ArtifactKind("chat", "compress.chat.config:ChatConfig", runs=()),
)
KINDS: dict[str, ArtifactKind] = {k.stage: k for k in _ROWS}


@dataclasses.dataclass(frozen=True)
class ForeignKind:
    """Model folders another tool writes, measured by bench beside ours. Without a manifest there is no stage,
    config or input to name: the ``marker`` file recognises the folder and ``inspect`` (``"module:function"``,
    folder -> report dict) validates it at the boundary (an ArtifactError naming the file and field) and answers
    what a manifest's report would, for :attr:`runs`: ``model_file``, ``weight_files`` (name -> bytes: the file
    size bench reports) and the keys that :class:`Runs` ``when`` names."""

    name: str  # what bench's rows show as the stage
    marker: str  # the file that makes a folder without a manifest one of these
    inspect: str
    runs: tuple[Runs, ...]
    made_by: str  # the tool, for messages

    def runtime_paths(self, folder: Path, report: Mapping[str, Any]) -> dict[str, str]:
        return _runtime_paths(self.runs, folder, report)


FOREIGN: tuple[ForeignKind, ...] = (
    # onnxruntime-genai's model builder; our loop too where the graph's inputs are the ones it feeds
    ForeignKind("genai-folder", "genai_config.json", "runtimes.genai_folder:inspect_genai_folder",
                runs=(Runs("onnxruntime-genai"), Runs("onnxruntime", when="our_loop")),
                made_by="onnxruntime-genai's model builder"),
)


def foreign_kind(folder: Path) -> ForeignKind | None:
    """The :data:`FOREIGN` row of a folder without a manifest, by its marker file; None when none matches."""
    return next((k for k in FOREIGN if (Path(folder) / k.marker).is_file()), None)
# export format -> stage ("gguf" -> "export-gguf")
EXPORT_FORMATS: dict[str, str] = {k.export_format: k.stage for k in _ROWS if k.export_format}


def resolve(ref: str) -> Any:
    """The object a ``"module:attribute"`` reference names (its module imported now)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def kind(stage: str) -> ArtifactKind:
    if stage not in KINDS:
        from .config import suggest

        raise ConfigError(f"unknown stage kind {stage!r}{suggest(stage, KINDS)}; known: {', '.join(KINDS)}")
    return KINDS[stage]


def by_format(fmt: str, *, where: str = "format") -> ArtifactKind:
    """The export kind of ``compress export --format FMT``; ConfigError naming the formats otherwise."""
    if fmt not in EXPORT_FORMATS:
        from .config import suggest

        raise ConfigError(f"{where}: {fmt!r} is not an export format{suggest(str(fmt), EXPORT_FORMATS)}; "
                          f"choose one of: {', '.join(EXPORT_FORMATS)}")
    return KINDS[EXPORT_FORMATS[fmt]]


def pytorch_loader(stage: str | None):
    """The PyTorch loader of ``stage``'s artifacts, or None: a transformers folder (no loader in the table),
    or a stage whose code is not installed (an export-only install without compress.quantize)."""
    k = KINDS.get(stage) if stage is not None else None
    if k is None or k.loader is None:
        return None
    try:
        return resolve(k.loader)
    except ImportError:
        return None
