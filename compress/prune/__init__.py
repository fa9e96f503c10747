"""Stage "prune": depth (drop layers), width (MLP channels, attention heads), wanda and 2:4 sparsity.

    from compress.prune import PruneConfig, prune
    prune("smollm2-135m", PruneConfig(method="depth", layers=20), "out/smol-20l")
"""

from .config import PruneConfig
from .run import prune

__all__ = ["PruneConfig", "prune"]
