"""Quantization stage: int8 / w8a8 / int4 (RTN, GPTQ, AWQ), mixed precision, and its artifact.

    from compress.quantize import QuantConfig, calibration_ids, quantize_

    cfg = QuantConfig(scheme="int4-awq", group_size=64)
    ids = calibration_ids(tok, load_text(cfg.calib), samples=cfg.samples, seq_len=cfg.seq_len)
    result = quantize_(model, cfg, ids)          # in place; result.tensors holds the integers

The artifact layout that exporters read is documented in FORMAT.md next to this file; format.py is its
one reader (numpy only: ``open_quantized(folder).quantized(name).dequantize()``);
``artifact.load_quantized`` is the PyTorch loader that :mod:`compress.kinds` names for manifest stage
``quantize`` (compress.models imports it when it meets such a manifest).

Modules in the order a run flows: :mod:`.config`, :mod:`.targets` (what each format makes of a grid),
:mod:`.layers` (the plan, and what must fail before calibration), :mod:`.calibrate`, :mod:`.grid`,
the methods (:mod:`.gptq`, :mod:`.awq`, :mod:`.clip`), :mod:`.sensitivity` (mixed precision),
:mod:`.core` (``quantize_``), :mod:`.modules` (how quantized weights run in PyTorch), :mod:`.scoring`,
:mod:`.format` and :mod:`.artifact` (the artifact and its loader), :mod:`.run` (the stage) and :mod:`.cli`.
"""

import importlib

from .config import SCHEMES, QuantConfig  # light: registers the config type that recipes name

# Everything else needs torch: imported on first use, so `compress chat` / `compress --help` do not pay
# ~1.5 s and ~170 MB for a stage they never run (PEP 562 module __getattr__).
_LAZY = {"load_qtensors": ".artifact", "load_quantized": ".artifact", "read_quantization_json": ".format",
         "open_quantized": ".format", "QuantizedFolder": ".format", "QuantizedWeight": ".format",
         "save_artifact": ".artifact", "calibration_ids": ".calibrate", "QuantResult": ".core",
         "quantize_": ".core", "Grid": ".grid", "QTensor": ".grid", "rtn": ".grid", "run_quantize": ".run"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Grid", "QTensor", "QuantConfig", "QuantResult", "QuantizedFolder", "QuantizedWeight", "SCHEMES",
           "calibration_ids", "load_qtensors", "load_quantized", "open_quantized", "quantize_",
           "read_quantization_json", "rtn", "run_quantize", "save_artifact"]
