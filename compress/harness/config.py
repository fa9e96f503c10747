"""The bench and check configs (frozen, versioned, registered: a recipe names them ``bench``/``check``)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from compress.config import StageConfig, register_config, suggest
from compress.data import TASKS
from compress.errors import ConfigError


@register_config("bench")
@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig(StageConfig):
    """What ``compress bench`` measures.

    >>> BenchConfig(profile="phone", max_tokens=2048, repetitions=3)
    """

    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("data", "tasks", "profile")  # by content in the id
    runtimes: tuple[str, ...] = ()  # () = each artifact's own runtime; names restrict (or add PyTorch for GGUFs)
    profile: str = "laptop"  # name (compress profiles) or YAML path
    reference: str | None = None  # None: the bundled model the artifacts' manifests lead back to
    include_reference: bool = True  # a row for the reference itself (PyTorch)
    data: str = "moby-dick"
    max_tokens: int = 2048
    window: int = 512
    tasks: tuple[str, ...] = tuple(TASKS)
    mc_limit: int = 50
    prompt_tokens: int = 128
    new_tokens: int = 128
    # decode and prefill speed measured again with this many tokens of context already in the cache
    # (llama-bench's -d): chat runs at 1-4k tokens, where a growing KV cache slows some runtimes down
    depths: tuple[int, ...] = (0,)
    warmup: int = 1
    repetitions: int = 3
    accuracy: bool = True
    latency: bool = True
    roofline: bool = True

    def validate(self) -> None:
        from runtimes import known_runtimes

        for r in self.runtimes:
            if r not in known_runtimes():
                raise ConfigError(f"bench.runtimes: unknown runtime {r!r}{suggest(r, known_runtimes())}; "
                                  f"known: {', '.join(known_runtimes())}")
        self.require_at_least(1, "max_tokens", "window", "prompt_tokens", "new_tokens", "repetitions")
        if self.new_tokens < 2:
            raise ConfigError("bench.new_tokens: decode speed needs at least 2 new tokens")
        if not self.depths or any(d < 0 for d in self.depths) or len(set(self.depths)) != len(self.depths):
            raise ConfigError(f"bench.depths: {list(self.depths)} must be distinct context lengths >= 0 "
                              "(e.g. 0, 512, 2048)")
        if self.warmup < 0 or self.mc_limit < 0:
            raise ConfigError("bench.warmup and bench.mc_limit must be >= 0")
        if not (self.accuracy or self.latency):
            raise ConfigError("bench: accuracy and latency are both off; nothing to measure")


@register_config("check")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckConfig(StageConfig):
    """Tolerances of ``compress check``: how far a run may fall behind its baseline.

    ppl and size are relative (0.01 = +1%), kl absolute, top1 and mc absolute fractions (0.02 = 2
    points), decode relative (0.2 = 20% slower) and only checked with ``latency=True``.
    """

    ppl: float = 0.01
    kl: float = 0.01
    top1: float = 0.02
    mc: float = 0.02
    size: float = 0.01
    decode: float = 0.20
    latency: bool = False

    def validate(self) -> None:
        for f in ("ppl", "kl", "top1", "mc", "size", "decode"):
            if getattr(self, f) < 0:
                raise ConfigError(f"check.{f}: tolerance {getattr(self, f)} must be >= 0")
