"""Stage "distill": knowledge distillation of a (pruned) student from a teacher, on accelerate.

    from compress.distill import DistillConfig, distill
    distill(DistillConfig(teacher="smollm2-135m", student="out/smol-20l", steps=200), "out/smol-kd")
"""

from .config import DistillConfig
from .loop import TrainingDivergedError, default_checkpoint_dir, distill

__all__ = ["DistillConfig", "TrainingDivergedError", "default_checkpoint_dir", "distill"]
