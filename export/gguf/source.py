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
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ArtifactError, ModelLoadError
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
    """The folder behind an artifact argument (a bundled name is fetched into the cache once)."""
    from compress.models import resolve_model

    src = resolve_model(spec)
    if src.kind == "bundled":
        from compress.fetch import ensure_fetched

        return ensure_fetched(src.spec)
    if src.kind == "gguf":
        raise ArtifactError(f"{spec}: already a GGUF file; export takes a model folder or a compress artifact")
    if src.kind == "hub":
        raise ModelLoadError(f"{spec}: export reads local folders only; download the model first "
                             f"(or name a bundled model)")
    return src.path


def open_source(spec: str | Path) -> ExportSource:
    """Open an artifact for export, checking its manifest, config and weight headers (no weights read)."""
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
    input_id = manifest.content_id if manifest else _folder_id(folder)
    return ExportSource(str(spec), folder, config, manifest, input_id, tensors, quant)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path.parent}: no {path.name} ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: corrupt {what} ({e})") from None


def _folder_id(folder: Path) -> str:
    """Like compress.models for plain folders: config plus weight file names and sizes."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for w in sorted(folder.glob("*.safetensors")):
        h.update(json.dumps([w.name, w.stat().st_size]).encode())
    return "dir:" + h.hexdigest()[:16]
