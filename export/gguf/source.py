"""The input of an export, read without torch: config, weights, and our quantized integers.

An artifact is a bundled model name (its cached fp32 folder), a Hugging Face folder, or the output
of a compress stage (a folder with ``manifest.json``). Quantized artifacts (stage ``quantize``) keep
each quantized linear ``NAME`` as ``NAME.qweight`` / ``NAME.scales`` / ``NAME.zeros`` with its scheme
in ``quantization.json``; :class:`QuantizedWeight` gives back the integers as stored, so that they
can reach GGUF blocks unchanged.

    >>> src = open_source("smollm2-135m")
    >>> src.weight("model.layers.0.self_attn.q_proj.weight").shape
    (576, 576)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.content import folder_id
from compress.errors import ArtifactError, ModelLoadError
from compress.jsonfile import read_json
from compress.manifest import MANIFEST, Manifest, read_manifest
from compress.quantize.format import (FORMAT_VERSION, QUANT_JSON, SUFFIXES, QuantizedWeight, quantized_weight,
                                      read_quantization_json)

from .tensors import SafetensorsFolder

log = logging.getLogger(__name__)

_QUANT_SUFFIXES = SUFFIXES
QUANT_FORMAT_VERSION = FORMAT_VERSION  # the reader's; kept for older imports


@dataclasses.dataclass
class ExportSource:
    spec: str
    folder: Path
    config: dict[str, Any]
    manifest: Manifest | None
    input_id: str
    tensors: SafetensorsFolder
    quantization: dict[str, Any] | None
    gguf_input: Path | None = None  # the .gguf the artifact argument named; ``folder`` is its import

    def notes(self) -> list[str]:
        """What the export read, when that is not the argument itself (a GGUF input)."""
        if self.gguf_input is None:
            return []
        r = self.manifest.report if self.manifest else {}
        ppl = (f" (perplexity {r['torch_perplexity']:.3f} vs llama.cpp {r['llamacpp_perplexity']:.3f})"
               if "llamacpp_perplexity" in r and "torch_perplexity" in r else "")
        return [f"input {self.gguf_input.name} ({gguf_input_type(self.gguf_input)}) was read through its import "
                f"{self.folder}: dequantized to fp32 and checked against llama.cpp{ppl}; a quantized type here "
                f"rounds those weights again"]

    @property
    def stage(self) -> str | None:
        return self.manifest.stage if self.manifest else None

    def quantized_layers(self) -> dict[str, dict[str, Any]]:
        return dict((self.quantization or {}).get("layers", {}))

    def logical_names(self) -> list[str]:
        """Tensor names as the model sees them: ``NAME.qweight``/``scales``/``zeros`` become ``NAME.weight``."""
        out, seen = [], set()
        layers = self.quantized_layers()
        for n in self.tensors.names():
            for suf in _QUANT_SUFFIXES:
                if n.endswith(suf) and n[: -len(suf)] in layers:
                    n = n[: -len(suf)] + ".weight"
                    break
            if n not in seen:
                seen.add(n)
                out.append(n)
        return out

    def has(self, name: str) -> bool:
        return name in self.tensors or (name.endswith(".weight") and name[: -len(".weight")] in self.quantized_layers())

    def shape(self, name: str) -> tuple[int, ...]:
        lin = name[: -len(".weight")] if name.endswith(".weight") else None
        if lin in self.quantized_layers():
            return tuple(self.quantized_layers()[lin]["shape"])
        return self.tensors.shape(name)

    def weight(self, name: str) -> np.ndarray | QuantizedWeight:
        """float32 array, or the :class:`QuantizedWeight` of a quantized linear's ``.weight``."""
        lin = name[: -len(".weight")] if name.endswith(".weight") else None
        layers = self.quantized_layers()
        if lin in layers:
            return self._quantized(lin, layers[lin])
        return self.tensors.array(name)

    def _quantized(self, lin: str, meta: dict[str, Any]) -> QuantizedWeight:
        version = int((self.quantization or {}).get("format_version", FORMAT_VERSION))
        return quantized_weight(self.tensors, lin, meta, self.folder / QUANT_JSON, version=version)


def resolve_folder(spec: str | Path) -> Path:
    """The folder behind an artifact argument: a bundled name is fetched into the cache once, and a
    ``.gguf`` file (or one of our GGUF exports) is imported into the cache once, as fp32 safetensors
    checked against llama.cpp (:func:`compress.fetch.import_gguf`); the export reads that folder."""
    from compress.models import resolve_model

    src = resolve_model(spec)
    if src.kind == "bundled":
        from compress.fetch import ensure_fetched

        return ensure_fetched(src.spec)
    if src.kind == "gguf":
        from compress.fetch import import_gguf

        folder = import_gguf(src.path)
        log.info("%s: exporting its import %s (dequantized to fp32, checked against llama.cpp)", spec, folder)
        return folder
    if src.kind == "hub":
        raise ModelLoadError(f"{spec}: export reads local folders only; download the model first "
                             f"(or name a bundled model)")
    return src.path


# general.file_type (llama.cpp's LlamaFileType) -> the --qtype naming the same file
_FILE_TYPE_QTYPE = {"ALL_F32": "F32", "MOSTLY_F16": "F16", "MOSTLY_BF16": "BF16", "MOSTLY_Q8_0": "Q8_0",
                    "MOSTLY_Q5_1": "Q5_1", "MOSTLY_Q5_0": "Q5_0", "MOSTLY_Q4_1": "Q4_1", "MOSTLY_Q4_0": "Q4_0",
                    "MOSTLY_Q4_K_M": "Q4_K_M", "MOSTLY_Q5_K_M": "Q5_K_M", "MOSTLY_Q6_K": "Q6_K"}


def gguf_input_type(path: Path) -> str:
    """The type a GGUF file is, named as ``--qtype`` names it: its ``general.file_type``, else the type
    of most of its matrices (read from the header, torch-free)."""
    from collections import Counter

    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            name = LlamaFileType(int(field.contents())).name
            return _FILE_TYPE_QTYPE.get(name, name.removeprefix("MOSTLY_").removeprefix("ALL_"))
        except ValueError:
            pass
    count = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    return count.most_common(1)[0][0] if count else "F32"


def check_gguf_input(spec: str | Path, qtype: str) -> None:
    """A GGUF input exported as its own type (or ``auto``: the artifact's weights as they are) is refused
    before the import: the result would be the same file at best, and after a dequantize-and-round-again
    of a quantized file a slightly worse one. Another type is fine (the report says it was a GGUF)."""
    from compress.errors import ConfigError
    from compress.models import resolve_model

    src = resolve_model(spec)
    if src.kind != "gguf":
        return
    own = gguf_input_type(src.path)
    if qtype in ("auto", own):
        raise ConfigError(f"--qtype {qtype}: {spec} is already a {own} GGUF, so this export would write the same "
                          f"file again ({'rounded twice' if own not in ('F32', 'F16', 'BF16') else 'nothing gained'}); "
                          f"use the file as it is (compress chat/bench take it), or name another --qtype")


def open_source(spec: str | Path, *, qtype: str | None = None) -> ExportSource:
    """Open an artifact for export, checking its manifest, config and weight headers (no weights read).
    ``qtype``: the GGUF type asked for, to refuse a GGUF input's own type before importing it."""
    if qtype is not None:
        check_gguf_input(spec, qtype)
    folder = resolve_folder(spec)
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    config = _read_json(folder / "config.json", "model config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{folder / 'config.json'}: not a JSON object")
    from compress.families import check_model_files

    check_model_files(folder, config)  # an unsupported family is refused before the weights are opened
    tensors = SafetensorsFolder(folder)
    quant = None
    qpath = folder / QUANT_JSON
    if qpath.is_file() or (manifest is not None and manifest.stage == "quantize"):
        quant = read_quantization_json(folder)
    input_id = manifest.content_id if manifest else folder_id(folder)
    from compress.models import resolve_model

    given = resolve_model(spec)
    return ExportSource(str(spec), folder, config, manifest, input_id, tensors, quant,
                        gguf_input=given.path if given.kind == "gguf" else None)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path.parent}: no {path.name} ({what})")
    return read_json(path, ArtifactError, problem=f"corrupt {what}")
