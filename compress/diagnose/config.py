"""``compress diagnose``'s one config (frozen, versioned, registered like every stage's).

    cfg = DiagnoseConfig(tokens=1024, granularity="auto")
    assert DiagnoseConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, Optional

from ..config import StageConfig, register_config
from ..errors import ConfigError

Granularity = Literal["auto", "tensor", "block"]
Fix = Literal["keep8", "group", "tables"]


@register_config("diagnose")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DiagnoseConfig(StageConfig):
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("data",)  # by content in the id
    reference: Optional[str] = None  # default: the quantize manifest's input
    data: str = "moby-dick-calib"  # held-in text: the quantizer's own loss, as its report scores it
    tokens: int = 1024
    granularity: Granularity = "auto"  # auto: every tensor when few, else blocks then the top blocks' tensors
    max_tensor_runs: int = 64  # auto: above this many quantized tensors, blocks first
    refine_share: float = 0.75  # auto: refine the top blocks that together hold this share of the loss
    target_share: float = 0.5  # keep8: the fewest tensors whose predicted recovery reaches this share
    fix: Fix = "keep8"  # what --apply writes
    keep: Optional[int] = None  # keep8: this many tensors instead of the suggested number
    threads: int = 2

    def validate(self) -> None:
        if self.tokens < 16:
            raise ConfigError(f"diagnose.tokens: {self.tokens} is too few (>= 16)")
        if self.max_tensor_runs < 1 or self.threads < 1:
            raise ConfigError("diagnose.max_tensor_runs and diagnose.threads must be >= 1")
        for name in ("refine_share", "target_share"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"diagnose.{name}: {v} must be in (0, 1]")
        if self.keep is not None and self.keep < 1:
            raise ConfigError(f"diagnose.keep: {self.keep} must be >= 1")
