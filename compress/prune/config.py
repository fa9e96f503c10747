"""The pruning stage's one config.

    PruneConfig(method="depth", layers=20)                      # keep 20 decoder layers
    PruneConfig(method="width", intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2)
    PruneConfig(method="wanda", sparsity=0.5)                    # unstructured, per output row
    PruneConfig(method="2:4")                                    # 2 of every 4 consecutive inputs kept

``depth`` and ``width`` give a physically smaller model with its own config; ``wanda`` and ``2:4``
keep the shapes and store the zeros densely (see :mod:`compress.prune.sparsity` for who gains speed).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, Optional

from ..config import StageConfig, register_config
from ..errors import ConfigError

Method = Literal["depth", "width", "wanda", "2:4"]
DepthMetric = Literal["cosine", "perplexity"]


@register_config("prune")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneConfig(StageConfig):
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("calib",)  # by content in the id
    method: Method = "depth"
    # depth: decoder layers to keep
    layers: Optional[int] = None
    # cosine: 1 - cos(input, output) of each block (ShortGPT's block influence, one pass);
    # perplexity: calibration NLL increase when the block alone is skipped (one pass per layer)
    depth_metric: DepthMetric = "cosine"
    # width: sizes to keep, uniform across layers (a transformers config has one of each)
    intermediate_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_key_value_heads: Optional[int] = None
    # wanda: fraction of each output row's weights set to zero
    sparsity: float = 0.5
    calib: str = "moby-dick-calib"  # never the evaluation split
    samples: int = 32
    seq_len: int = 256
    seed: int = 0
    eval_tokens: int = 2048  # held-out tokens scored before/after for the report (0 = none)

    def validate(self) -> None:
        self.require_at_least(1, "samples", "seq_len")
        self.require_at_least(0, "eval_tokens", note=" (0 = no report scoring)")
        if self.method == "depth":
            self.require_at_least(1, "layers")
        if self.method == "width":
            self.require_at_least(1, "intermediate_size", "num_attention_heads", "num_key_value_heads")
            if (self.num_attention_heads is not None and self.num_key_value_heads is not None
                    and self.num_attention_heads % self.num_key_value_heads):
                raise ConfigError(f"prune.num_attention_heads: {self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads {self.num_key_value_heads} (grouped KV heads need it)")
        if self.method == "wanda" and not 0 < self.sparsity < 1:
            raise ConfigError(f"prune.sparsity: {self.sparsity} must be in (0, 1)")
        if self.method != "depth" and self.layers is not None:
            raise ConfigError(f"prune.layers: only depth pruning drops layers, not {self.method}")

    def require_target(self) -> None:
        """A default config is valid (recipes fill it in); running one needs the method's target."""
        if self.method == "depth" and self.layers is None:
            raise ConfigError("prune.layers: depth pruning needs the number of layers to keep (--target N)")
        if self.method == "width" and all(s is None for s in (self.intermediate_size, self.num_attention_heads,
                                                               self.num_key_value_heads)):
            raise ConfigError("prune.width: give at least one of intermediate_size, num_attention_heads, "
                              "num_key_value_heads (--target ffn=N,heads=N,kv_heads=N)")

    def describe(self) -> str:
        if self.method == "depth":
            return f"depth to {self.layers} layers ({self.depth_metric})"
        if self.method == "width":
            parts = [f"{k}={v}" for k, v in (("ffn", self.intermediate_size), ("heads", self.num_attention_heads),
                                              ("kv_heads", self.num_key_value_heads)) if v is not None]
            return "width " + ",".join(parts)
        if self.method == "wanda":
            return f"wanda {self.sparsity:.0%} unstructured"
        return "2:4 semi-structured"
