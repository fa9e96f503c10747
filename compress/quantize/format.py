"""The one reader of the quantized artifact format (FORMAT.md, next to this file): numpy only, no torch.

The PyTorch loader (artifact.py), the GGUF exporter and the ONNX exporter all read through here, so a
layout rule lives in one place.

    >>> qf = open_quantized("out/smollm2-int4")          # checks quantization.json and every header
    >>> qw = qf.quantized("model.layers.0.mlp.down_proj")
    >>> qw.bits, qw.group_size, qw.symmetric, qw.shape
    (4, 32, True, (576, 1536))
    >>> w = qw.dequantize()                               # float32, exactly (q - zero) * scale
    >>> qf.array("model.norm.weight")                     # a float tensor, float32
    >>> qf.weight("model.layers.0.mlp.down_proj.weight")  # QuantizedWeight or float32 array, by HF name

Storage per bit width (``q`` unsigned unless stated, ``zero`` implicit when symmetric):

    bits  qweight                         q range      symmetric zero   asymmetric zeros
    4     uint8 [out, in/2], low nibble   0..15        8                uint8 0..15
    5     uint8 [out, in], one per byte   0..31        16               uint8 0..31
    8     int8 [out, in] (sym, signed)    -127..127    0                uint8 0..255 (q uint8)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from ..errors import ArtifactError
from ..jsonfile import read_json

FORMAT_VERSION = 2  # written; version 2 added 5-bit layers
READABLE_VERSIONS = (1, 2)
BITS_BY_VERSION = {1: (4, 8), 2: (4, 5, 8)}
WEIGHTS = "model.safetensors"
QUANT_JSON = "quantization.json"
SUFFIXES = (".qweight", ".scales", ".zeros")


def implicit_zero(bits: int) -> int:
    """The zero point a symmetric layer does not store: 8 (int4, like Q4_0), 16 (int5, like Q5_0), 0 (int8)."""
    return {4: 8, 5: 16, 8: 0}[bits]


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest stored integer."""
    if bits == 8 and symmetric:
        return -127, 127
    return 0, (1 << bits) - 1


def qweight_spec(bits: int, symmetric: bool, shape: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """(safetensors dtype, shape) of ``NAME.qweight`` for a weight of ``shape`` [out, in]."""
    out_f, in_f = shape
    if bits == 4:
        return "U8", (out_f, in_f // 2)
    return ("I8" if bits == 8 and symmetric else "U8"), (out_f, in_f)


def pack(q: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Integers [out, in] (any integer dtype, on the grid) -> the stored ``qweight`` array."""
    if bits == 4:
        u = np.asarray(q).astype(np.uint8)
        return np.ascontiguousarray(u[:, 0::2] | (u[:, 1::2] << np.uint8(4)))  # low nibble = even column
    return np.ascontiguousarray(np.asarray(q).astype(np.int8 if bits == 8 and symmetric else np.uint8))


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """One quantized matrix: ``w[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g]``."""

    name: str  # the module's name, without ".weight"
    bits: int  # 4, 5 or 8
    group_size: int  # columns per scale; equal to in_features for per-channel
    symmetric: bool
    shape: tuple[int, int]  # (out, in)
    qweight: np.ndarray  # as stored (see the module doc)
    scales: np.ndarray  # float16 [out, in/g]; may be negative (symmetric 4/5-bit map the signed extreme low)
    zeros: np.ndarray | None  # uint8 [out, in/g] when asymmetric

    @classmethod
    def from_integers(cls, name: str, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, *, bits: int,
                      group_size: int, symmetric: bool) -> QuantizedWeight:
        """Build from unpacked integers [out, in] (tests, fixtures, writers)."""
        q = np.asarray(q)
        return cls(name, bits, group_size, symmetric, (int(q.shape[0]), int(q.shape[1])), pack(q, bits, symmetric),
                   np.asarray(scales, dtype=np.float16), None if zeros is None else np.asarray(zeros, dtype=np.uint8))

    @property
    def scheme(self) -> str:
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} g{self.group_size}"

    @property
    def n_groups(self) -> int:
        return self.shape[1] // self.group_size

    def integers(self) -> np.ndarray:
        """The stored integers, one per weight [out, in]: uint8 (int4, int5, asymmetric int8) or int8."""
        if self.bits == 4:
            q = np.empty(self.shape, dtype=np.uint8)
            q[:, 0::2] = self.qweight & 0x0F
            q[:, 1::2] = self.qweight >> 4
            return q
        return np.asarray(self.qweight)

    def zero_points(self) -> np.ndarray:
        """Zero point per group, int16 [out, in/g] (implicit_zero(bits) when symmetric)."""
        if self.zeros is not None:
            return np.asarray(self.zeros, dtype=np.int16)
        return np.full(self.scales.shape, implicit_zero(self.bits), dtype=np.int16)

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
                                   zeros=None if self.zeros is None else np.asarray(self.zeros)[rows],
                                   shape=(len(rows), self.shape[1]))


# ---------------------------------------------------------------------------------------------------
# quantization.json


def parse_quantization_json(info: Any, where: str | Path) -> dict[str, Any]:
    """Validate a loaded quantization.json (version, and every layer entry); returns it unchanged."""
    if not isinstance(info, dict):
        raise ArtifactError(f"{where}: not a JSON object")
    version = info.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(f"{where}: format_version {version!r}; this compress reads "
                            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer compress wrote it?)")
    layers = info.get("layers")
    if not isinstance(layers, dict):
        raise ArtifactError(f"{where}: 'layers' must be an object naming each quantized tensor")
    for name, meta in layers.items():
        layer_spec(name, meta, where, version=version)
    return info


def read_quantization_json(folder: str | Path) -> dict[str, Any]:
    """``folder``/quantization.json, validated (ArtifactError naming the file and field)."""
    f = Path(folder) / QUANT_JSON
    if not f.is_file():
        raise ArtifactError(f"{folder}: no {QUANT_JSON} (not a quantized artifact)")
    return parse_quantization_json(read_json(f, ArtifactError), f)


def layer_spec(name: str, meta: Any, where: str | Path = QUANT_JSON, *,
               version: int = FORMAT_VERSION) -> tuple[int, int, bool, tuple[int, int]]:
    """(bits, group_size, symmetric, shape) of one ``layers`` entry; group_size 0 or absent-width
    normalised to in_features (per channel)."""
    at = f"{where}: layers.{name}"
    try:
        bits, g, sym = int(meta["bits"]), int(meta["group_size"]), meta["symmetric"]
        out_f, in_f = (int(x) for x in meta["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{at}: missing or malformed field ({e})") from None
    if not isinstance(sym, bool):
        raise ArtifactError(f"{at}.symmetric: {sym!r} must be true or false")
    allowed = BITS_BY_VERSION[version]
    if bits not in allowed:
        raise ArtifactError(f"{at}.bits: {bits} is not one of {', '.join(map(str, allowed))} "
                            f"(format_version {version})")
    if out_f < 1 or in_f < 1:
        raise ArtifactError(f"{at}.shape: {[out_f, in_f]} must be positive")
    if g <= 0:
        g = in_f
    if in_f % g:
        raise ArtifactError(f"{at}.group_size: {g} does not divide the input width {in_f}")
    if bits == 4 and in_f % 2:
        raise ArtifactError(f"{at}.shape: int4 packs two columns per byte, so the width {in_f} must be even")
    return bits, g, sym, (out_f, in_f)


# ---------------------------------------------------------------------------------------------------
# tensors


class TensorStore(Protocol):
    """What the reader needs of a safetensors file: export/gguf's memory-mapped SafetensorsFolder fits."""

    def names(self) -> list[str]: ...
    def __contains__(self, name: str) -> bool: ...
    def dtype(self, name: str) -> str: ...  # safetensors code: "F32", "F16", "U8", "I8", ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def raw(self, name: str) -> np.ndarray: ...


class NumpySafetensors:
    """A single ``model.safetensors`` through safetensors' numpy backend (lazy, one tensor per read)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path.parent}: no {self.path.name}")
        try:
            self._fh = safe_open(str(self.path), framework="np")
            self._names = list(self._fh.keys())
        except Exception as e:  # safetensors raises SafetensorError on truncated or corrupt files
            raise ArtifactError(f"{self.path}: corrupt safetensors file ({e})") from None
        self._set = set(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def _slice(self, name: str):
        if name not in self._set:
            raise ArtifactError(f"{self.path}: tensor {name} is missing")
        return self._fh.get_slice(name)

    def dtype(self, name: str) -> str:
        return str(self._slice(name).get_dtype())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self._slice(name).get_shape())

    def raw(self, name: str) -> np.ndarray:
        self._slice(name)
        try:
            return self._fh.get_tensor(name)
        except Exception as e:  # e.g. bfloat16, which numpy has no dtype for
            raise ArtifactError(f"{self.path}: tensor {name} cannot be read with numpy ({e})") from None


def check_layer_tensors(store: TensorStore, name: str, meta: dict[str, Any], where: str | Path, *,
                        version: int = FORMAT_VERSION) -> None:
    """Header checks of one layer's tensors (dtype, shape, zeros present iff asymmetric), no data read."""
    bits, g, sym, shape = layer_spec(name, meta, where, version=version)
    q_dtype, q_shape = qweight_spec(bits, sym, shape)
    want = {f"{name}.qweight": (q_dtype, q_shape), f"{name}.scales": ("F16", (shape[0], shape[1] // g))}
    if not sym:
        want[f"{name}.zeros"] = ("U8", (shape[0], shape[1] // g))
    elif f"{name}.zeros" in store:
        raise ArtifactError(f"{where}: {name} is symmetric but {name}.zeros is stored")
    for t, (dtype, tshape) in want.items():
        if t not in store:
            raise ArtifactError(f"{where}: {name} is listed in {QUANT_JSON} but {t} is missing from {WEIGHTS}")
        got_d, got_s = store.dtype(t), tuple(store.shape(t))
        if got_d != dtype or got_s != tuple(tshape):
            raise ArtifactError(f"{where}: corrupt quantized tensor {t}: {got_d} {list(got_s)}, expected "
                                f"{dtype} {list(tshape)} (int{bits} {'sym' if sym else 'asym'} g{g})")
    if f"{name}.weight" in store:
        raise ArtifactError(f"{where}: {name} is quantized but {name}.weight is stored as well")


def quantized_weight(store: TensorStore, name: str, meta: dict[str, Any], where: str | Path, *,
                     version: int = FORMAT_VERSION) -> QuantizedWeight:
    """Read one quantized layer from ``store``; checks headers, and that 5-bit integers and stored zeros
    lie on the grid (a 4-bit nibble and a symmetric int8 cannot be off it except at -128)."""
    check_layer_tensors(store, name, meta, where, version=version)
    bits, g, sym, shape = layer_spec(name, meta, where, version=version)
    qw = store.raw(f"{name}.qweight")
    scales = store.raw(f"{name}.scales")
    zeros = None if sym else store.raw(f"{name}.zeros")
    lo, hi = qrange(bits, sym)
    if bits != 4 and qw.size and (int(qw.min()) < lo or int(qw.max()) > hi):
        raise ArtifactError(f"{where}: {name}.qweight holds {int(qw.min())}..{int(qw.max())}, outside int{bits}'s "
                            f"{lo}..{hi}")
    if zeros is not None and zeros.size and int(zeros.max()) > hi:
        raise ArtifactError(f"{where}: {name}.zeros holds {int(zeros.max())}, above int{bits}'s {hi}")
    return QuantizedWeight(name, bits, g, sym, shape, qw, scales, zeros)


def logical_name(stored: str, layers: dict[str, Any]) -> str:
    """``NAME.qweight``/``.scales``/``.zeros`` of a quantized layer -> ``NAME.weight``; others unchanged."""
    for suf in SUFFIXES:
        if stored.endswith(suf) and stored[: -len(suf)] in layers:
            return stored[: -len(suf)] + ".weight"
    return stored


class QuantizedFolder:
    """A quantize-stage artifact opened for reading (see :func:`open_quantized`)."""

    def __init__(self, path: Path, info: dict[str, Any], store: TensorStore):
        self.path = path
        self.info = info
        self.store = store

    @property
    def version(self) -> int:
        return int(self.info["format_version"])

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        """quantization.json's ``layers``: module name -> entry."""
        return self.info["layers"]

    @property
    def tied(self) -> bool:
        return bool(self.info.get("tied"))

    @property
    def skipped(self) -> dict[str, str]:
        return dict(self.info.get("skipped") or {})

    def float_names(self) -> list[str]:
        """Stored tensors that are not part of a quantized layer (HF names, float32 in our artifacts)."""
        return [n for n in self.store.names() if logical_name(n, self.layers) == n]

    def logical_names(self) -> list[str]:
        """Every tensor as the model names it: a quantized layer's three tensors become ``NAME.weight``."""
        out: dict[str, None] = {}
        for n in self.store.names():
            out.setdefault(logical_name(n, self.layers), None)
        return list(out)

    def quantized(self, name: str) -> QuantizedWeight:
        """The stored integers of module ``name`` (a key of :attr:`layers`)."""
        if name not in self.layers:
            raise ArtifactError(f"{self.path}: {name} is not a quantized layer of this artifact")
        return quantized_weight(self.store, name, self.layers[name], self.path / QUANT_JSON, version=self.version)

    def quantized_weights(self) -> Iterator[QuantizedWeight]:
        """Every quantized layer in quantization.json's order, one at a time."""
        for name in self.layers:
            yield self.quantized(name)

    def array(self, name: str) -> np.ndarray:
        """A stored float tensor as float32."""
        if name not in self.store:
            raise ArtifactError(f"{self.path / WEIGHTS}: tensor {name} is missing")
        dtype = self.store.dtype(name)
        if dtype not in ("F32", "F16", "F64"):
            raise ArtifactError(f"{self.path / WEIGHTS}: tensor {name} is {dtype}, expected a float")
        a = self.store.raw(name)
        if a.dtype == np.float32 and a.flags.writeable:
            return a  # already a private copy (NumpySafetensors): no second one
        return np.array(a, dtype=np.float32)

    def weight(self, name: str) -> np.ndarray | QuantizedWeight:
        """By HF tensor name: the :class:`QuantizedWeight` of a quantized ``NAME.weight``, else float32."""
        lin = name[: -len(".weight")] if name.endswith(".weight") else None
        if lin in self.layers:
            return self.quantized(lin)
        return self.array(name)

    def check(self) -> None:
        """Header checks of every quantized layer (dtypes, shapes, zeros iff asymmetric)."""
        for name, meta in self.layers.items():
            check_layer_tensors(self.store, name, meta, self.path / QUANT_JSON, version=self.version)


def open_quantized(folder: str | Path, store: TensorStore | None = None) -> QuantizedFolder:
    """Open a quantize-stage artifact: quantization.json validated, every quantized tensor's dtype and
    shape checked against it (headers only; integers are read layer by layer on request).

    ``store`` lets a caller that already holds the weights open (the GGUF exporter's memory map) reuse it.
    """
    folder = Path(folder)
    info = read_quantization_json(folder)
    if store is None:
        store = NumpySafetensors(folder / WEIGHTS)
    qf = QuantizedFolder(folder, info, store)
    qf.check()
    return qf
