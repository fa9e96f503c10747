"""The weights an ONNX export reads: float tensors from the PyTorch model of the artifact, and the
artifact's own integers (stage ``quantize``) exactly as stored, never re-quantized.

    src = open_weights(load_model("out/smollm2-int4"))
    qw = src.quantized("model.layers.0.mlp.down_proj")     # QuantizedWeight or None
    qw.bits, qw.group_size, qw.integers().shape             # 4, 64, (576, 1536) unpacked integers
    w = src.float("model.norm.weight")                      # float32 numpy

The integers come from the format's one reader, :func:`compress.quantize.format.open_quantized`
(compress/quantize/FORMAT.md: int4 packed two a byte, 5-bit and int8 one a byte, float16 scales, uint8
zeros when asymmetric); this module only checks them against the tensors PyTorch runs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ArtifactError
from compress.quantize.format import QUANT_JSON, WEIGHTS, QuantizedWeight, open_quantized

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WeightSource:
    state: dict[str, np.ndarray]  # HF state dict as float32 numpy (views of the torch tensors)
    qweights: dict[str, QuantizedWeight]  # module name -> the artifact's integers
    quant_info: dict[str, Any] | None  # quantization.json, when the artifact is quantized

    def float(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise ArtifactError(f"tensor {name}: missing from the model")
        return self.state[name]

    def has(self, name: str) -> bool:
        return name in self.state

    def quantized(self, module: str) -> QuantizedWeight | None:
        return self.qweights.get(module)


def open_weights(loaded) -> WeightSource:
    """Float tensors of ``loaded.model`` plus, for a quantized artifact (a folder with quantization.json),
    its stored integers checked against the tensors PyTorch runs (they must dequantize to exactly the
    same values)."""
    model = loaded.model
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if getattr(model, "lm_head", None) is not None and "lm_head.weight" not in state:
        state["lm_head.weight"] = model.lm_head.weight.detach().float().numpy()
    folder = Path(loaded.source.path) if loaded.source.path else None
    if folder is None or not (folder / QUANT_JSON).is_file():
        return WeightSource(state, {}, None)
    qf = open_quantized(folder)
    qweights = {qw.name: qw for qw in qf.quantized_weights()}
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
    return WeightSource(state, qweights, qf.info)


def rtn(name: str, w: np.ndarray, bits: int, block: int) -> QuantizedWeight:
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
    return QuantizedWeight.from_integers(name, q, s16, None, bits=bits, group_size=block, symmetric=True)

