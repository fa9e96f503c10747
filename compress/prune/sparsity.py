"""Wanda (unstructured) and 2:4 (semi-structured) sparsity on the decoder's linear layers.

    norms = input_norms(model, calib_ids)
    report = sparsify_(model, norms, pattern="wanda", sparsity=0.5)

Score of weight W[o, i] = |W[o, i]| x ||X_i||_2, with X_i input channel i over every calibration
token (Wanda, Sun et al. 2023). ``wanda``: in each output row, the lowest ``sparsity`` fraction is set
to zero. ``2:4``: in each group of 4 consecutive inputs of a row, the 2 lowest are set to zero. Norms
come from one pass of the unpruned model (Wanda's reference code feeds each layer the pruned
layers' outputs instead; the one-pass form is cheaper and close at 50%). Embeddings and the output
projection stay dense, as in the paper.

The zeros are stored densely: shapes and file sizes do not change. Who gains speed:
PyTorch on CPU, onnxruntime on CPU and llama.cpp run a sparse matrix exactly as fast as a dense one;
2:4 is accelerated only by NVIDIA sparse tensor cores (Ampere and later, through cuSPARSELt /
TensorRT / ``torch.sparse.to_sparse_semi_structured``). On a laptop CPU the gain is in size only,
and only after a compressor (zeros compress), not in safetensors, GGUF or ONNX as written.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import IncompatibleLayerError
from ..progress import track
from .model_ops import decoder_layers

SPEED_NOTE = ("stored densely: PyTorch CPU, onnxruntime CPU and llama.cpp gain no speed and no file size from "
              "these zeros; 2:4 runs faster only on NVIDIA sparse tensor cores (Ampere+, cuSPARSELt/TensorRT)")


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder layers, by its full name."""
    prefix, layers = decoder_layers(model)
    return {f"{prefix}.{i}.{n}": m for i, layer in enumerate(layers)
            for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


@torch.inference_mode()
def input_norms(model: nn.Module, ids: torch.Tensor, batch: int = 8) -> dict[str, torch.Tensor]:
    """||X_i||_2 per input channel of every target linear, over all calibration tokens."""
    linears = target_linears(model)
    sq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}

    def make(name: str):
        def hook(mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq[name].add_(x.pow(2).sum(0).double())
        return hook

    handles = [m.register_forward_pre_hook(make(name)) for name, m in linears.items()]
    try:
        for s in track(range(0, len(ids), batch), "wanda input norms"):
            model(ids[s:s + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {name: v.sqrt().float() for name, v in sq.items()}


def wanda_mask(weight: torch.Tensor, norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask: in each row, the ``round(sparsity x in)`` lowest-scoring weights are dropped."""
    score = weight.detach().abs().float() * norm[None, :]
    k = int(round(weight.shape[1] * sparsity))
    mask = torch.ones_like(score, dtype=torch.bool)
    if k:
        drop = torch.topk(score, k, dim=1, largest=False).indices
        mask.scatter_(1, drop, False)
    return mask


def two_four_mask(weight: torch.Tensor, norm: torch.Tensor, where: str = "") -> torch.Tensor:
    """Boolean keep-mask with exactly 2 kept in every 4 consecutive inputs of each row."""
    out_f, in_f = weight.shape
    if in_f % 4:
        raise IncompatibleLayerError(f"{where}: 2:4 sparsity needs in_features divisible by 4, got {in_f}")
    score = (weight.detach().abs().float() * norm[None, :]).reshape(out_f, in_f // 4, 4)
    keep = torch.topk(score, 2, dim=2).indices
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask.scatter_(2, keep, True)
    return mask.reshape(out_f, in_f)


@torch.no_grad()
def sparsify_(model: nn.Module, norms: dict[str, torch.Tensor], *, pattern: str, sparsity: float = 0.5) -> dict:
    """Zero weights in place; return the report (sparsity per layer, overall, and the speed note)."""
    linears = target_linears(model)
    if pattern == "2:4":  # check every layer before touching any
        bad = [f"{n} ({m.in_features})" for n, m in linears.items() if m.in_features % 4]
        if bad:
            raise IncompatibleLayerError(f"2:4 sparsity needs in_features divisible by 4; not: {', '.join(bad)}")
    per_layer, zeros, total = {}, 0, 0
    for name, m in linears.items():
        if pattern == "2:4":
            mask = two_four_mask(m.weight, norms[name], name)
        else:
            mask = wanda_mask(m.weight, norms[name], sparsity)
        m.weight.mul_(mask.to(m.weight.dtype))
        z = int((m.weight == 0).sum())
        per_layer[name] = round(z / m.weight.numel(), 4)
        zeros, total = zeros + z, total + m.weight.numel()
    return {"pattern": pattern, "sparsity_per_layer": per_layer, "sparsity_decoder_linears": round(zeros / total, 4),
            "zeros": zeros, "decoder_linear_weights": total, "speed": SPEED_NOTE}
