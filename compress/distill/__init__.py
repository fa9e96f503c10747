"""Stage "distill": knowledge distillation of a (pruned) student from a teacher, on accelerate.

    from compress.distill import DistillConfig, distill
    distill(DistillConfig(teacher="smollm2-135m", student="out/smol-20l", steps=200), "out/smol-kd")

Modules: :mod:`.config`, :mod:`.data` (token stream and sample order), :mod:`.setup` (checks and the
layer map), :mod:`.loss`, :mod:`.checkpoint` (atomic, resumable), :mod:`.loop` (the stage) and
:mod:`.cli`.
"""

import importlib

from .config import DistillConfig  # light: registers the config type that recipes name

# The training loop needs torch and accelerate: imported on first use so `compress --help` and `compress
# chat` do not pay for them (PEP 562 module __getattr__, as in compress.quantize)
_LAZY = ("TrainingDivergedError", "default_checkpoint_dir", "distill")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(".loop", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DistillConfig", "TrainingDivergedError", "default_checkpoint_dir", "distill"]
