"""``ChatConfig``: how ``compress chat`` generates; the same fields a ``--config`` file or a recipe holds.

    cfg = ChatConfig(max_new_tokens=64, temperature=0.0)
    assert ChatConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..config import StageConfig, register_config
from ..errors import ConfigError


@register_config("chat")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatConfig(StageConfig):
    """max_new_tokens: answer length cap. temperature 0 is greedy (the default: reproducible answers from a
    small model); above 0, sampling from the top_k / top_p nucleus with ``seed``. context: tokens of
    history kept (capped by what the artifact runs); the oldest turns are dropped first, the system
    message never. threads: None = the device profile's, else 2."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0
    context: int = 2048
    system: Optional[str] = None
    threads: Optional[int] = None

    def validate(self) -> None:
        self.require_at_least(1, "max_new_tokens", "top_k", "threads")
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"chat.temperature: {self.temperature} must be in [0, 5] (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"chat.top_p: {self.top_p} must be in (0, 1]")
        if self.context < 64:
            raise ConfigError(f"chat.context: {self.context} is too short (>= 64 tokens)")
        if self.max_new_tokens >= self.context:
            raise ConfigError(f"chat.max_new_tokens: {self.max_new_tokens} leaves no room for the prompt in a "
                              f"context of {self.context} tokens")
