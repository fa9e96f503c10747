"""ONNX export: our own decoder graph on onnxruntime's fused CPU ops, checked in onnxruntime after writing.

    from export.onnx import OnnxConfig, export_onnx
    path = export_onnx("out/smollm2-int4", OnnxConfig(precision="int4"), "out/smollm2-onnx-int4")

Modules: :mod:`.config` (the stage config and tolerances), :mod:`.arch` (per-family table and shapes
from the real tensors), :mod:`.weights` (float tensors and the artifact's integers), :mod:`.plan` (the
form of each weight), :mod:`.graph` (builder and MatMulNBits packing), :mod:`.decoder` (the graph),
:mod:`.tools` (onnxruntime's quantizers and .ort converter), :mod:`.validate` (onnxruntime vs PyTorch),
:mod:`.genai` (``genai_config.json`` for onnxruntime-genai) and :mod:`.export` (the stage). The runtimes
that drive the files are :mod:`runtimes.onnx_runtime` (our loop) and :mod:`runtimes.genai_runtime`
(onnxruntime-genai's generator).
"""

from .arch import SUPPORTED
from .config import PRECISIONS, OnnxConfig
from .export import export_onnx

__all__ = ["OnnxConfig", "PRECISIONS", "SUPPORTED", "export_onnx"]
