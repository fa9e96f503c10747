"""Stage "prune": depth (drop layers), width (MLP channels, attention heads), wanda and 2:4 sparsity.

    from compress.prune import PruneConfig, prune
    prune("smollm2-135m", PruneConfig(method="depth", layers=20), "out/smol-20l")

Modules: :mod:`.config`, then one per method (:mod:`.depth`, :mod:`.width`, :mod:`.sparsity`, sharing
:mod:`.model_ops`), :mod:`.run` (checks, importance, surgery, the artifact: a transformers folder) and
:mod:`.cli`.
"""

from .config import PruneConfig  # light: registers the config type that recipes name


def __getattr__(name: str):
    # prune() needs torch: imported on first use so `compress --help` and `compress chat` do not pay for
    # it (PEP 562 module __getattr__, as in compress.quantize)
    if name == "prune":
        from .run import prune

        return prune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PruneConfig", "prune"]
