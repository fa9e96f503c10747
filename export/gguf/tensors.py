"""Read safetensors files with numpy alone (no torch), lazily, through a memory map.

The GGUF writer must stay torch-free, and ``safetensors``' numpy backend cannot read bfloat16 (numpy
has no such dtype), which hub checkpoints often use. The format is simple enough to read directly:
an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range, then the raw bytes. Every inconsistency becomes an :class:`ArtifactError` naming the file
and tensor, so a truncated or corrupt artifact is refused before anything is written.

    >>> st = SafetensorsFolder(Path("artifact"))
    >>> w = st.array("model.norm.weight")  # float32 copy for float tensors
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compress.checkpoints import safetensors_header
from compress.errors import ArtifactError

# safetensors dtype -> (numpy dtype, is a float that becomes float32 on read)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


class SafetensorsFolder:
    """All tensors of ``model.safetensors`` or of a sharded ``model.safetensors.index.json``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._where: dict[str, tuple[Path, dict]] = {}
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if single.is_file():
            files = [single]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ArtifactError(f"{index}: corrupt safetensors index ({e})") from None
            files = sorted({self.folder / f for f in weight_map.values()})
        else:
            raise ArtifactError(f"{self.folder}: no model.safetensors (GGUF export reads safetensors weights only)")
        for f in files:
            for name, info in _read_header(f).items():
                if name in self._where:
                    raise ArtifactError(f"{f}: tensor {name} appears in two weight files")
                self._where[name] = (f, info)

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)[1]["shape"])

    def dtype(self, name: str) -> str:
        return self._info(name)[1]["dtype"]

    def raw(self, name: str) -> np.ndarray:
        """The stored array as is (a read-only view of the file; bfloat16 comes back as uint16)."""
        path, info = self._info(name)
        start, end = info["abs_offsets"]
        dtype = _DTYPES[info["dtype"]]
        if end == start:  # an empty tensor: nothing to map
            return np.empty(info["shape"], dtype=dtype)
        # A map of this tensor's bytes alone, unmapped when the array is dropped. One map of the whole
        # file kept for the export's lifetime held every page it had read resident: the model's full
        # size of RSS (540 MB for SmolLM2) next to the PyTorch reference that validation loads.
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(end - start,))
        return mm.view(dtype).reshape(info["shape"])

    def array(self, name: str) -> np.ndarray:
        """A float32 copy for float tensors (bfloat16 widened exactly); integer tensors as stored."""
        dt = self.dtype(name)
        a = self.raw(name)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if dt in ("F64", "F32", "F16"):
            return np.array(a, dtype=np.float32)
        return np.array(a)

    def _info(self, name: str) -> tuple[Path, dict]:
        try:
            return self._where[name]
        except KeyError:
            raise ArtifactError(f"{self.folder}: tensor {name} is missing from the weights") from None


def _read_header(path: Path) -> dict[str, dict]:
    """compress.checkpoints' reader, plus what the exporter needs: a dtype it can read, and byte
    ranges that match the shape."""
    header, data_start = safetensors_header(path, ArtifactError)
    out = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise ArtifactError(f"{path}: tensor {name} has dtype {dtype}; readable: {', '.join(_DTYPES)}")
        want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if end - begin != want or begin < 0:
            raise ArtifactError(f"{path}: tensor {name} claims {end - begin} bytes but shape {shape} "
                                f"({dtype}) needs {want}")
        out[name] = {"dtype": dtype, "shape": shape, "abs_offsets": (data_start + begin, data_start + end)}
    return out
