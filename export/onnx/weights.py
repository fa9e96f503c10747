"""The weights an ONNX export reads: float tensors from the PyTorch model of the artifact, and the
artifact's own integers (stage ``quantize``) exactly as stored, never re-quantized.

    src = open_weights(load_model("out/smollm2-int4"))
    qw = src.quantized("model.layers.0.mlp.down_proj")     # QWeight or None
    qw.bits, qw.group_size, qw.q.shape                      # 4, 64, (576, 1536) unpacked integers
    w = src.float("model.norm.weight")                      # float32 numpy

Layout of a quantized artifact (compress/quantize/FORMAT.md): ``NAME.qweight`` (int4: uint8 [out, in/2],
low nibble = even column, unsigned 0..15, symmetric zero 8; int8: int8 signed with zero 0, or uint8 with
``NAME.zeros``), ``NAME.scales`` float16 [out, in/group], and ``quantization.json`` naming every layer.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ArtifactError

log = logging.getLogger(__name__)

QUANT_JSON = "quantization.json"
WEIGHTS = "model.safetensors"


@dataclasses.dataclass
class QWeight:
    """Integers of one matrix, unpacked: ``w[o, i] = (q[o, i] - zero[o, i // g]) * scale[o, i // g]``."""

    name: str  # module name (the tensor is NAME.weight in the HF state dict)
    bits: int
    group_size: int
    symmetric: bool
    q: np.ndarray  # [out, in]: uint8 0..15 (int4), int8 (int8 symmetric) or uint8 (int8 asymmetric)
    scales: np.ndarray  # float16 [out, in / group]
    zeros: np.ndarray | None  # uint8 [out, in / group]
    origin: str = "artifact"  # "artifact" | "export-rtn"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def zero(self) -> np.ndarray | int:
        if self.zeros is not None:
            return np.repeat(self.zeros.astype(np.float32), self.group_size, axis=1)
        return 8 if self.bits == 4 else 0

    def dequantize(self) -> np.ndarray:
        s = np.repeat(self.scales.astype(np.float32), self.group_size, axis=1)
        return (self.q.astype(np.float32) - self.zero) * s


@dataclasses.dataclass
class WeightSource:
    state: dict[str, np.ndarray]  # HF state dict as float32 numpy (views of the torch tensors)
    qweights: dict[str, QWeight]  # module name -> the artifact's integers
    quant_info: dict[str, Any] | None  # quantization.json, when the artifact is quantized

    def float(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise ArtifactError(f"tensor {name}: missing from the model")
        return self.state[name]

    def has(self, name: str) -> bool:
        return name in self.state

    def quantized(self, module: str) -> QWeight | None:
        return self.qweights.get(module)


def open_weights(loaded) -> WeightSource:
    """Float tensors of ``loaded.model`` plus, for a quantized artifact, its stored integers checked
    against the tensors PyTorch runs (they must dequantize to exactly the same values)."""
    model = loaded.model
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if getattr(model, "lm_head", None) is not None and "lm_head.weight" not in state:
        state["lm_head.weight"] = model.lm_head.weight.detach().float().numpy()
    info = getattr(model, "compress_quantization", None)
    if info is None:
        return WeightSource(state, {}, None)
    folder = Path(loaded.source.path) if loaded.source.path else None
    if folder is None or not (folder / WEIGHTS).is_file():
        raise ArtifactError(f"{loaded.source.spec}: quantized model without {WEIGHTS} to read its integers from")
    qweights = read_integers(folder, info)
    for name, qw in qweights.items():
        ref = state.get(f"{name}.weight")
        if ref is None:
            raise ArtifactError(f"{folder / QUANT_JSON}: layer {name} is not a tensor of the model")
        if ref.shape != qw.shape:
            raise ArtifactError(f"{folder / WEIGHTS}: {name} integers are {list(qw.shape)}, the model's weight is "
                                f"{list(ref.shape)}")
        diff = float(np.abs(qw.dequantize() - ref).max())
        if diff > 1e-6 * max(1.0, float(np.abs(ref).max())):
            raise ArtifactError(f"{folder / WEIGHTS}: {name} integers dequantize {diff:.3g} away from the weights "
                                "PyTorch runs (corrupt artifact)")
    return WeightSource(state, qweights, info)


def read_integers(folder: Path, info: dict[str, Any]) -> dict[str, QWeight]:
    """Every layer of ``quantization.json`` from ``model.safetensors``, unpacked; ArtifactError names
    the tensor whose dtype or shape does not fit the format."""
    from safetensors import safe_open

    out: dict[str, QWeight] = {}
    layers = info.get("layers")
    if not isinstance(layers, dict):
        raise ArtifactError(f"{folder / QUANT_JSON}: 'layers' is missing or not a mapping")
    try:
        fh = safe_open(str(folder / WEIGHTS), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for a truncated header
        raise ArtifactError(f"{folder / WEIGHTS}: cannot read ({e})") from None
    keys = set(fh.keys())
    for name, meta in layers.items():
        try:
            bits, group, sym = int(meta["bits"]), int(meta["group_size"]), bool(meta["symmetric"])
            out_f, in_f = (int(x) for x in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{folder / QUANT_JSON}: layer {name}: malformed entry ({e})") from None
        where = f"{folder / WEIGHTS}: {name}"
        for suffix in (".qweight", ".scales") + (() if sym else (".zeros",)):
            if name + suffix not in keys:
                raise ArtifactError(f"{where}{suffix} is missing")
        qweight, scales = fh.get_tensor(name + ".qweight"), fh.get_tensor(name + ".scales")
        zeros = None if sym else fh.get_tensor(name + ".zeros")
        if bits not in (4, 8) or group < 1 or in_f % group:
            raise ArtifactError(f"{folder / QUANT_JSON}: layer {name}: bits {bits} / group_size {group} do not fit "
                                f"width {in_f}")
        if bits == 4:
            _expect(where + ".qweight", qweight, np.uint8, (out_f, in_f // 2))
            q = np.empty((out_f, in_f), np.uint8)
            q[:, 0::2], q[:, 1::2] = qweight & 0x0F, qweight >> 4
        else:
            _expect(where + ".qweight", qweight, np.int8 if sym else np.uint8, (out_f, in_f))
            q = qweight
        _expect(where + ".scales", scales, np.float16, (out_f, in_f // group))
        if zeros is not None:
            _expect(where + ".zeros", zeros, np.uint8, (out_f, in_f // group))
        out[name] = QWeight(name, bits, group, sym, q, scales, zeros)
    return out


def _expect(where: str, t: np.ndarray, dtype, shape: tuple[int, ...]) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ArtifactError(f"{where}: {t.dtype} {list(t.shape)}, expected {np.dtype(dtype)} {list(shape)}")


def rtn(name: str, w: np.ndarray, bits: int, block: int) -> QWeight:
    """Symmetric round-to-nearest per block, on the grid the quantize stage uses (int4 maps each
    block's signed extreme to -8 as llama.cpp's Q4_0 does; int8 maps max|w| to 127), with the
    integers chosen against the fp16-rounded scale so that the stored pair reproduces itself."""
    out_f, in_f = w.shape
    g = w.astype(np.float32).reshape(out_f, in_f // block, block)
    if bits == 4:
        idx = np.abs(g).argmax(-1)[..., None]
        scale = np.take_along_axis(g, idx, -1)[..., 0] / -8.0
    else:
        scale = np.abs(g).max(-1) / 127.0
    s16 = scale.astype(np.float16)
    s16[s16 == 0] = np.float16(6e-8)  # an all-zero block: any scale gives q = zero
    s = s16.astype(np.float32)[..., None]
    if bits == 4:
        q = (np.clip(np.round(g / s) + 8, 0, 15)).astype(np.uint8).reshape(out_f, in_f)
    else:
        q = np.clip(np.round(g / s), -127, 127).astype(np.int8).reshape(out_f, in_f)
    return QWeight(name, bits, block, True, q, s16, None, origin="export-rtn")

