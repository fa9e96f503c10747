"""The quantization stage's one config.

    cfg = QuantConfig(scheme="int4-gptq", budget_bits=5.5, target="gguf")
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg

Schemes: ``int8`` (weight-only, per output channel unless ``group_size`` is set), ``w8a8`` (int8
weights plus dynamic per-token int8 activations), ``int4-rtn|gptq|awq`` and ``int5-rtn|gptq|awq``.

``target`` (gguf | onnx | both) restricts every grid to what the named formats hold exactly
(targets.py): GGUF blocks of 32 and symmetric 8-bit; MatMulNBits power-of-two blocks. It also sets the
default int4/int5 group to 32 (GGUF's block; SmolLM2's 576 is not a multiple of 128) and makes
``budget_bits`` count each layer at what it costs in those files.

Version 2 (5-bit, ``target``, ``budget_menu``, ``budget_tables``, ``embeddings``/``lm_head`` ``auto``):
``budget_bits`` now counts the embedding/output table and may choose 5 bits. A version-1 config loads
with its old meaning (menu 4/8/16 on the decoder linears, tables as written).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal, Optional

from ..config import StageConfig, register_config
from ..errors import ConfigError
from . import targets as tg

Scheme = Literal["int8", "w8a8", "int4-rtn", "int4-gptq", "int4-awq", "int5-rtn", "int5-gptq", "int5-awq"]
Precision = Literal["auto", "keep", "int8", "int5", "int4"]

SCHEMES: dict[str, tuple[int, str]] = {  # scheme -> (bits, method)
    "int8": (8, "rtn"),
    "w8a8": (8, "rtn"),
    "int4-rtn": (4, "rtn"),
    "int4-gptq": (4, "gptq"),
    "int4-awq": (4, "awq"),
    "int5-rtn": (5, "rtn"),
    "int5-gptq": (5, "gptq"),
    "int5-awq": (5, "awq"),
}
GROUP_SIZES = (0, 16, 32, 64, 128, 256)  # 0 = one scale per output channel
DEFAULT_INT4_GROUP = 128  # what torchao / llm-compressor default to (no --target)
DEFAULT_TARGET_GROUP = 32  # with --target: GGUF's block, and a MatMulNBits block
MENU_BITS = (4, 5, 8, 16)  # what --budget-bits may choose per tensor (16 = keep in float)


@register_config("quantize")
@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig(StageConfig):
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("calib",)  # by content in the id
    VERSION = 2

    scheme: Scheme = "int4-gptq"
    group_size: Optional[int] = None  # None: per channel for int8/w8a8; int4/int5: 32 with a target, else 128
    symmetric: bool = True  # for 4/5-bit grids; with a GGUF target 8-bit grids are always symmetric (Q8_0)
    target: Optional[tg.Target] = None  # gguf | onnx | both: only grids those formats carry exactly
    calib: str = "moby-dick-calib"  # never a BIG-bench task: those are for evaluation only
    samples: int = 128
    seq_len: int = 512
    seed: int = 0
    exclude: Optional[str] = None  # regex on module names (re.search) left in float
    embeddings: Precision = "auto"  # auto: chosen by --budget-bits when given, else keep
    lm_head: Precision = "auto"
    skip_incompatible: bool = False
    damp: float = 0.01  # GPTQ: fraction of the mean Hessian diagonal added before Cholesky
    act_order: bool = False  # GPTQ: columns by decreasing Hessian diagonal, with static groups
    clip_search: bool = True  # GPTQ: search each group's range for the least output error (AWQ always does)
    awq_grid: int = 20  # AWQ: ratios tried for s = mean|x| ** ratio
    analyze: bool = False
    analyze_tokens: int = 256
    budget_bits: Optional[float] = None  # average bits per weight over decoder linears (+ tables, see below)
    budget_menu: Optional[tuple[int, ...]] = None  # None: the scheme's bits and every wider entry of MENU_BITS
    budget_tables: bool = True  # the embedding/output table counts in the budget (and is chosen when auto)
    eval_tokens: int = 1024  # held-in tokens scored against the unquantized model for the report
    batch: int = 8  # calibration samples per layer forward: bounds activation memory

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        if from_version < 2:
            # version 1: the budget chose int4/int8/16 for decoder linears only; tables as written
            data.setdefault("embeddings", "keep")
            data.setdefault("lm_head", "keep")
            data.setdefault("budget_menu", [4, 8, 16])
            data.setdefault("budget_tables", False)
        return super().migrate(data, from_version)

    def validate(self) -> None:
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantize.group_size: {self.group_size} is not one of "
                              f"{', '.join(map(str, GROUP_SIZES))} (0 = per output channel)")
        self.require_at_least(1, "samples", "seq_len", "batch", "awq_grid", "analyze_tokens")
        if self.seq_len < 8:
            raise ConfigError(f"quantize.seq_len: {self.seq_len} is too short (>= 8)")
        self.require_at_least(0, "eval_tokens", note=" (0 = no report scoring)")
        if not 0 < self.damp < 1:
            raise ConfigError(f"quantize.damp: {self.damp} must be in (0, 1)")
        if self.act_order and self.method != "gptq":
            raise ConfigError(f"quantize.act_order: only the GPTQ schemes reorder columns, not {self.scheme}")
        if self.exclude is not None:
            try:
                re.compile(self.exclude)
            except re.error as e:
                raise ConfigError(f"quantize.exclude: {self.exclude!r} is not a valid regex ({e})") from None
        self._validate_target()
        if self.budget_menu is not None:
            bad = [b for b in self.budget_menu if b not in MENU_BITS]
            if bad or len(self.budget_menu) < 2 or self.bits not in self.budget_menu:
                raise ConfigError(f"quantize.budget_menu: {list(self.budget_menu)} must hold {self.scheme}'s "
                                  f"{self.bits} bits and at least one more of {', '.join(map(str, MENU_BITS))}")
        if self.budget_bits is not None:
            if self.bits == 8:
                raise ConfigError(f"quantize.budget_bits: mixes 4/5/8/16-bit tensors upwards from the scheme's "
                                  f"bits, so it needs an int4 or int5 scheme, not {self.scheme}")
            if not self.bits < self.budget_bits <= 16:
                raise ConfigError(f"quantize.budget_bits: {self.budget_bits} must be in ({self.bits}, 16]")

    def _validate_target(self) -> None:
        if self.target not in ("gguf", "both"):
            return
        g = self.group_size
        if g:  # 0 / None: per channel or the default, checked per layer
            reason = tg.why_not("gguf", 4, g, True, g)
            if reason:
                raise ConfigError(f"quantize.group_size: {g} with --target {self.target}: {reason}; "
                                  f"use 32, 64, 128 or 256")
        if self.bits == 8 and not self.symmetric:
            raise ConfigError(f"quantize.symmetric: --target {self.target} carries int8 only as GGUF Q8_0 "
                              f"(w = d*q, no zero point); drop --asymmetric")

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
        if self.bits == 8:
            return 0
        return DEFAULT_TARGET_GROUP if self.target else DEFAULT_INT4_GROUP

    def grid_symmetric(self, bits: int) -> bool:
        """Whether a ``bits``-bit grid of this config is symmetric: ``symmetric``, except that GGUF holds
        8 bits only symmetrically (Q8_0), so a GGUF target's 8-bit tensors are symmetric regardless."""
        if bits == 8 and self.target in ("gguf", "both"):
            return True
        return self.symmetric

    @property
    def menu(self) -> tuple[int, ...]:
        """The bits --budget-bits chooses from (16 = float)."""
        if self.budget_menu is not None:
            return tuple(sorted(set(self.budget_menu)))
        menu = [b for b in MENU_BITS if b >= self.bits]
        return tuple(b for b in menu if b == self.bits or not self._dominated(b, menu))

    def _dominated(self, bits: int, menu: list[int]) -> bool:
        """Whether the target's files make ``bits`` cost no less than a wider quantized entry: 5-bit rides
        in MatMulNBits' 8-bit storage, so for ``--target onnx`` (or both) int5 costs more than int8 and
        the budget would never choose it; measuring its sensitivity only doubled the analysis time."""
        if not self.target:
            return False
        g = self.effective_group_size or 4096  # per channel: a nominal row (costs do not depend on it)
        width = g * 8
        cost = tg.cost_bits(self.target, bits, g, self.grid_symmetric(bits), width)
        return any(cost >= tg.cost_bits(self.target, w, g, self.grid_symmetric(w), width)
                   for w in menu if bits < w < 16)

    def table_precision(self, which: str) -> str:
        """``embeddings`` or ``lm_head`` with ``auto`` resolved: ``budget`` (the allocator chooses) or keep."""
        p = getattr(self, which)
        if p != "auto":
            return p
        return "budget" if self.budget_bits is not None and self.budget_tables else "keep"

    @property
    def activations(self) -> str | None:
        return "int8-dynamic" if self.scheme == "w8a8" else None

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq") or self.analyze or self.budget_bits is not None
