"""The distillation stage's one config.

    cfg = DistillConfig(teacher="smollm2-135m", student="out/smol-20l", steps=200, seq_len=256, batch=4)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg

Loss = T^2 x KL(teacher_T || student_T) over every position (forward KL of temperature-softened
next-token distributions, Hinton et al.), plus ``hidden_weight`` x MSE between mapped hidden states,
plus ``ce_weight`` x the ordinary next-token cross-entropy. How the run is executed (threads, where
checkpoints go, a time limit per chunk) is not part of the config: it does not change the result.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from ..config import StageConfig, register_config
from ..errors import ConfigError


@register_config("distill")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(StageConfig):
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("data", "eval_data")  # by content in the id
    teacher: str = "smollm2-135m"
    student: str = ""  # a model folder (a prune artifact, usually)
    data: str = "moby-dick-calib"  # training text: never the evaluation split
    eval_data: str = "moby-dick"  # perplexity every eval_every steps on its first eval_tokens tokens
    steps: int = 200
    seq_len: int = 256
    batch: int = 4  # sequences per step and process (the global batch is batch x processes)
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # the schedule ends at lr x this
    warmup: int = 10
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 2.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    # student layer -> teacher layer pairs for the hidden-state loss; empty = from the student's prune
    # report (layers kept by depth pruning), else identity when the depths agree
    layer_map: tuple[tuple[int, int], ...] = ()
    checkpoint_every: int = 25
    eval_every: int = 50
    eval_tokens: int = 2048
    max_epochs: float = 1.0  # refuse a run that would pass over the training text more often than this
    seed: int = 0

    def validate(self) -> None:
        self.require_at_least(1, "steps", "seq_len", "batch", "checkpoint_every", "eval_every")
        if self.seq_len < 8:
            raise ConfigError(f"distill.seq_len: {self.seq_len} is too short (>= 8)")
        if not self.lr > 0:
            raise ConfigError(f"distill.lr: {self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"distill.min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")
        self.require_at_least(0, "warmup")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature: {self.temperature} must be > 0")
        self.require_at_least(0, "ce_weight", "hidden_weight", "weight_decay", "eval_tokens")
        if not self.max_epochs > 0:
            raise ConfigError(f"distill.max_epochs: {self.max_epochs} must be > 0")
        for i, pair in enumerate(self.layer_map):
            if len(pair) != 2 or min(pair) < 0:
                raise ConfigError(f"distill.layer_map[{i}]: {list(pair)} is not a [student, teacher] layer pair")

    def require_student(self) -> None:
        """A default config is valid (recipes fill the student in); running one needs it."""
        if not self.student:
            raise ConfigError("distill.student: required (a model folder, e.g. a prune artifact)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len
