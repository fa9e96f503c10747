"""Quantization stage: int8 / w8a8 / int4 (RTN, GPTQ, AWQ), mixed precision, and its artifact.

    from compress.quantize import QuantConfig, calibration_ids, quantize_

    cfg = QuantConfig(scheme="int4-awq", group_size=64)
    ids = calibration_ids(tok, load_text(cfg.calib), samples=cfg.samples, seq_len=cfg.seq_len)
    result = quantize_(model, cfg, ids)          # in place; result.tensors holds the integers

The artifact layout that exporters read is documented in FORMAT.md next to this file. Importing
this package registers the loader for manifest stage ``quantize`` with :mod:`compress.models`.
"""

from ..models import register_artifact_loader
from .artifact import load_qtensors, load_quantized, read_quantization_json, save_artifact
from .calibrate import calibration_ids
from .config import SCHEMES, QuantConfig
from .core import QuantResult, quantize_
from .grid import Grid, QTensor, rtn
from .run import run_quantize

register_artifact_loader("quantize", load_quantized)

__all__ = ["Grid", "QTensor", "QuantConfig", "QuantResult", "SCHEMES", "calibration_ids", "load_qtensors",
           "load_quantized", "quantize_", "read_quantization_json", "rtn", "run_quantize", "save_artifact"]
