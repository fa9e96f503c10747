"""How quantized weights run in PyTorch: dequantized fp32 weights (exactly (q - zero) * scale), and
for w8a8, activations rounded per token to int8 on the way into each linear.

    apply_qtensor(model, "model.layers.0.mlp.down_proj", qt, activations="int8-dynamic")
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .grid import QTensor


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per token (row): q = round(x / s), s = max|x| / 127, returned as q * s.
    This is what an int8 x int8 GEMM with dynamic activation scales computes."""
    s = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x / s).clamp(-127, 127) * s


class W8A8Linear(nn.Linear):
    """nn.Linear whose input is rounded to int8 per token (simulated; the weight is already int8-exact).
    A subclass, so state-dict names and isinstance checks stay those of the original linear."""

    @classmethod
    def wrap(cls, linear: nn.Linear) -> W8A8Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # the same Parameter objects
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_per_token(x), self.weight, self.bias)


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def apply_qtensor(model: nn.Module, name: str, qt: QTensor, *, activations: str | None = None) -> None:
    """Replace the weight of module ``name`` by ``qt``'s dequantized values (in place, so a tied
    lm_head follows its embeddings), wrapping it for dynamic int8 activations if asked."""
    apply_weight(model, name, qt.dequantize(), activations=activations)


@torch.no_grad()
def apply_weight(model: nn.Module, name: str, w: torch.Tensor, *, activations: str | None = None) -> None:
    """Like :func:`apply_qtensor`, given the dequantized weight itself (the artifact loader's path)."""
    mod = get_module(model, name)
    if tuple(mod.weight.shape) != tuple(w.shape):
        raise ValueError(f"{name}: weight {tuple(mod.weight.shape)} but quantized tensor {tuple(w.shape)}")
    mod.weight.copy_(w)
    if activations == "int8-dynamic" and isinstance(mod, nn.Linear) and not isinstance(mod, W8A8Linear):
        set_module(model, name, W8A8Linear.wrap(mod))
