"""The quantization stage's one config.

    cfg = QuantConfig(scheme="int4-gptq", group_size=64)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg

Schemes: ``int8`` (weight-only, per output channel unless ``group_size`` is set), ``w8a8`` (int8
weights plus dynamic per-token int8 activations), ``int4-rtn``, ``int4-gptq``, ``int4-awq``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional

from ..config import StageConfig, register_config
from ..errors import ConfigError

Scheme = Literal["int8", "w8a8", "int4-rtn", "int4-gptq", "int4-awq"]
Precision = Literal["keep", "int8", "int4"]

SCHEMES: dict[str, tuple[int, str]] = {  # scheme -> (bits, method)
    "int8": (8, "rtn"),
    "w8a8": (8, "rtn"),
    "int4-rtn": (4, "rtn"),
    "int4-gptq": (4, "gptq"),
    "int4-awq": (4, "awq"),
}
GROUP_SIZES = (0, 16, 32, 64, 128, 256)  # 0 = one scale per output channel
DEFAULT_INT4_GROUP = 128  # what torchao / llm-compressor default to


@register_config("quantize")
@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig(StageConfig):
    scheme: Scheme = "int4-gptq"
    group_size: Optional[int] = None  # None: per channel for int8/w8a8, 128 for int4
    symmetric: bool = True
    calib: str = "moby-dick-calib"  # never a BIG-bench task: those are for evaluation only
    samples: int = 128
    seq_len: int = 512
    seed: int = 0
    exclude: Optional[str] = None  # regex on module names (re.search) left in float
    embeddings: Precision = "keep"
    lm_head: Precision = "keep"
    skip_incompatible: bool = False
    damp: float = 0.01  # GPTQ: fraction of the mean Hessian diagonal added before Cholesky
    act_order: bool = False  # GPTQ: columns by decreasing Hessian diagonal, with static groups
    clip_search: bool = True  # GPTQ: search each group's range for the least output error (AWQ always does)
    awq_grid: int = 20  # AWQ: ratios tried for s = mean|x| ** ratio
    analyze: bool = False
    analyze_tokens: int = 256
    budget_bits: Optional[float] = None
    eval_tokens: int = 1024  # held-in tokens scored against the unquantized model for the report
    batch: int = 8  # calibration samples per layer forward: bounds activation memory

    def validate(self) -> None:
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantize.group_size: {self.group_size} is not one of "
                              f"{', '.join(map(str, GROUP_SIZES))} (0 = per output channel)")
        for name in ("samples", "seq_len", "batch", "awq_grid", "analyze_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quantize.{name}: {getattr(self, name)} must be >= 1")
        if self.seq_len < 8:
            raise ConfigError(f"quantize.seq_len: {self.seq_len} is too short (>= 8)")
        if self.eval_tokens < 0:
            raise ConfigError(f"quantize.eval_tokens: {self.eval_tokens} must be >= 0 (0 = no report scoring)")
        if not 0 < self.damp < 1:
            raise ConfigError(f"quantize.damp: {self.damp} must be in (0, 1)")
        if self.act_order and self.method != "gptq":
            raise ConfigError(f"quantize.act_order: only int4-gptq reorders columns, not {self.scheme}")
        if self.exclude is not None:
            try:
                re.compile(self.exclude)
            except re.error as e:
                raise ConfigError(f"quantize.exclude: {self.exclude!r} is not a valid regex ({e})") from None
        if self.budget_bits is not None:
            if self.bits != 4:
                raise ConfigError(f"quantize.budget_bits: mixes int4/int8/16-bit layers, so it needs an int4 "
                                  f"scheme, not {self.scheme}")
            if not 4 < self.budget_bits <= 16:
                raise ConfigError(f"quantize.budget_bits: {self.budget_bits} must be in (4, 16]")

    @property
    def bits(self) -> int:
        return SCHEMES[self.scheme][0]

    @property
    def method(self) -> str:
        return SCHEMES[self.scheme][1]

    @property
    def effective_group_size(self) -> int:
        """0 (per channel) or the group size, with the scheme's default filled in."""
        if self.group_size is not None:
            return self.group_size
        return 0 if self.bits == 8 else DEFAULT_INT4_GROUP

    @property
    def activations(self) -> str | None:
        return "int8-dynamic" if self.scheme == "w8a8" else None

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq") or self.analyze or self.budget_bits is not None
