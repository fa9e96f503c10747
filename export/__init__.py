"""Export stage: artifacts in deployable formats that prove themselves against PyTorch.

    from export import GGUFConfig, export_gguf
    export_gguf("smollm2-135m", GGUFConfig(qtype="Q4_K_M"), "out/q4km")

Formats: GGUF (:mod:`export.gguf`). The CLI (:mod:`export.cli`) dispatches ``--format`` through a
table, so another format is one entry there.
"""

from .gguf import QTYPES as GGUF_QTYPES
from .gguf import GGUFConfig, export_gguf

__all__ = ["GGUFConfig", "GGUF_QTYPES", "export_gguf"]
