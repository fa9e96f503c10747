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

from .tensors import SafetensorsFolder

log = logging.getLogger(__name__)

QUANT_FORMAT_VERSION = 1
_QUANT_SUFFIXES = (".qweight", ".scales", ".zeros")


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """One quantized linear: ``w[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g]``."""

    name: str  # the linear's name, without ".weight"
    bits: int
    group_size: int
    symmetric: bool
    shape: tuple[int, int]  # (out, in)
    qweight: np.ndarray  # int4: uint8 [out, in/2], two values per byte (low nibble first); int8: [out, in]
    scales: np.ndarray  # float16 [out, in/g]
    zeros: np.ndarray | None  # uint8 [out, in/g] when asymmetric

    @property
    def scheme(self) -> str:
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} g{self.group_size}"

    def integers(self) -> np.ndarray:
        """The stored integers, one per weight: uint8 0..15 for int4, int8 or uint8 for int8."""
        if self.bits == 4:
            q = np.empty(self.shape, dtype=np.uint8)
            q[:, 0::2] = self.qweight & 0x0F
            q[:, 1::2] = self.qweight >> 4
            return q
        return np.asarray(self.qweight)

    def zero_points(self) -> np.ndarray:
        """Zero point per group, as int16 [out, in/g] (8 for symmetric int4, 0 for symmetric int8)."""
        if self.zeros is not None:
            return np.asarray(self.zeros, dtype=np.int16)
        return np.full(self.scales.shape, 8 if self.bits == 4 else 0, dtype=np.int16)

    def dequantize(self) -> np.ndarray:
        """float32 weights; exact, since a small integer times a float16 scale fits float32."""
        g = self.group_size
        q = self.integers().astype(np.int16).reshape(self.shape[0], -1, g)
        z = self.zero_points()[:, :, None]
        s = np.asarray(self.scales, dtype=np.float32)[:, :, None]
        return ((q - z).astype(np.float32) * s).reshape(self.shape)

    def take_rows(self, rows: np.ndarray) -> QuantizedWeight:
        """The same integers with output rows reordered (llama.cpp's rope row order)."""
        return dataclasses.replace(self, qweight=np.asarray(self.qweight)[rows], scales=np.asarray(self.scales)[rows],
                                   zeros=None if self.zeros is None else np.asarray(self.zeros)[rows])


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
        where = f"{self.folder / 'quantization.json'}: layers.{lin}"
        try:
            bits, g, sym = int(meta["bits"]), int(meta["group_size"]), bool(meta["symmetric"])
            out_f, in_f = (int(x) for x in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: missing or malformed field ({e})") from None
        if bits not in (4, 8):
            raise ArtifactError(f"{where}.bits: {bits} is not supported (4 or 8)")
        if g <= 0:  # per-channel: one group spans the row
            g = in_f
        if in_f % g:
            raise ArtifactError(f"{where}.group_size: {g} does not divide the input width {in_f}")
        qw = self.tensors.raw(f"{lin}.qweight")
        sc = self.tensors.raw(f"{lin}.scales")
        want_q = (out_f, in_f // 2) if bits == 4 else (out_f, in_f)
        q_types = ("U8",) if bits == 4 else (("I8",) if sym else ("U8",))
        _check(f"{lin}.qweight", qw.shape, want_q, self.tensors.dtype(f"{lin}.qweight"), q_types, self.folder)
        _check(f"{lin}.scales", sc.shape, (out_f, in_f // g), self.tensors.dtype(f"{lin}.scales"), ("F16",), self.folder)
        zeros = None
        if not sym:
            zeros = self.tensors.raw(f"{lin}.zeros")
            _check(f"{lin}.zeros", zeros.shape, (out_f, in_f // g), self.tensors.dtype(f"{lin}.zeros"), ("U8",),
                   self.folder)
        return QuantizedWeight(lin, bits, g, sym, (out_f, in_f), qw, sc, zeros)


def _check(name: str, shape, want, dtype: str, dtypes: tuple[str, ...], folder: Path) -> None:
    if tuple(shape) != tuple(want) or dtype not in dtypes:
        raise ArtifactError(f"{folder}: corrupt quantized tensor {name}: {dtype} {list(shape)}, "
                            f"expected {'/'.join(dtypes)} {list(want)}")


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
    tensors = SafetensorsFolder(folder)
    quant = None
    qpath = folder / "quantization.json"
    if qpath.is_file() or (manifest is not None and manifest.stage == "quantize"):
        quant = _read_json(qpath, "quantization description")
        version = quant.get("format_version") if isinstance(quant, dict) else None
        if version != QUANT_FORMAT_VERSION or not isinstance(quant.get("layers"), dict):
            raise ArtifactError(f"{qpath}: format_version {version!r} with layers is not understood "
                                f"(this compress reads version {QUANT_FORMAT_VERSION})")
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
