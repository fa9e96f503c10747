"""Export stage: artifacts in deployable formats that prove themselves against PyTorch.

    from export import GGUFConfig, export_gguf
    export_gguf("smollm2-135m", GGUFConfig(qtype="Q4_K_M"), "out/q4km")

Formats: GGUF for llama.cpp (:mod:`export.gguf`) and ONNX for onnxruntime (:mod:`export.onnx`); each
reads an artifact, writes the file, and validates it against PyTorch before the output is complete.
The CLI (:mod:`export.cli`) dispatches ``--format`` through the export rows of :mod:`compress.kinds`,
so another format is a package like these plus one row there. Names are imported on first use: the
CLI imports this package at start-up and should not pay for gguf-py there.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"GGUFConfig": "export.gguf", "export_gguf": "export.gguf", "GGUF_QTYPES": "export.gguf"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    mod = importlib.import_module(_LAZY[name])
    return getattr(mod, "QTYPES" if name == "GGUF_QTYPES" else name)
