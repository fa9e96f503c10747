"""``compress diagnose``: where a quantized artifact's loss comes from, and what to do about it.

    from compress.diagnose import DiagnoseConfig, diagnose, write_diagnosis
    result = diagnose("out/smollm2-int4", DiagnoseConfig(tokens=1024))
    paths = write_diagnosis(result, Path("out/diagnosis"))     # diagnosis.md, .html, .json, layers.png

Modules: measure (tokens, KL), attribute (per-layer KL recovered), exported (quantizer or export?),
fixes (effect and cost, first estimated), joint (keep8 options measured with the fix in place), apply
(--apply), render (Markdown/HTML/chart), cli. Imported
lazily: registering the CLI command must not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"DiagnoseConfig": "config", "diagnose": "run", "markdown": "render", "headline": "render",
          "write_diagnosis": "render"}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(name)
