"""GGUF export: a torch-free, table-driven writer on gguf-py, checked in llama.cpp after writing.

    from export.gguf import GGUFConfig, export_gguf
    path = export_gguf("runs/smol-gptq64", GGUFConfig(), "out/smol-gguf")     # our integers, exactly
    path = export_gguf("smollm2-135m", GGUFConfig(qtype="Q4_0"), "out/smollm2-q4_0")

Modules: :mod:`.config` (the stage config and tolerances), :mod:`.source` (reading artifacts and our
quantized integers), :mod:`.arch` (HF -> GGUF tensor tables), :mod:`.hparams` (architecture keys from
the real tensor shapes), :mod:`.tokenizer`, :mod:`.metadata` (type-checked keys), :mod:`.plan` (type and
carry per tensor), :mod:`.blocks` (our integers in Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks), :mod:`.writer`,
:mod:`.kquant` (llama.cpp's quantizer), :mod:`.validate` (exactness; llama.cpp vs PyTorch),
:mod:`.export` (the stage) and :mod:`.cli` (``compress export --format gguf``).
"""

from .config import QTYPES, GGUFConfig
from .export import export_gguf

__all__ = ["GGUFConfig", "QTYPES", "export_gguf"]
