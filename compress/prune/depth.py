"""Depth pruning: measure each decoder layer's importance on calibration text, drop the least important.

    scores = layer_importance(model, calib_ids, metric="cosine")
    keep = choose_layers(scores, keep=20)
    small = drop_layers(model, keep)          # a new model with layers renumbered 0..19

Metrics:

- ``cosine``: 1 - cos(block input, block output), averaged over calibration tokens (ShortGPT's
  "block influence"). A block that barely turns the residual stream is cheap to remove. One pass.
- ``perplexity``: increase of the calibration NLL when that block alone is skipped. One pass per
  layer; closer to what we care about, but blind to interactions between removed layers too.

Per-layer config lists (Gemma3's ``layer_types``: sliding vs full attention) are cut to the layers
kept, so every kept layer keeps its own attention kind.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from .model_ops import build_like, decoder_layers, layer_input

# config keys that hold one entry per decoder layer
_PER_LAYER_KEYS = ("layer_types",)


@torch.inference_mode()
def calib_nll(model: nn.Module, ids: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token NLL of ``model`` over the calibration rows."""
    total, n = 0.0, 0
    for i in range(0, len(ids), batch):
        x = ids[i:i + batch]
        logits = model(x, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        n += x[:, 1:].numel()
    return total / n


@contextlib.contextmanager
def skipped(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Make ``layers`` return their input unchanged (their residual contribution masked out)."""

    def hook(mod, args, kwargs, output):
        hidden = layer_input(args, kwargs)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def layer_importance(model: nn.Module, ids: torch.Tensor, metric: str = "cosine", batch: int = 8) -> list[float]:
    """One importance score per decoder layer (higher = more important)."""
    _, layers = decoder_layers(model)
    if metric == "perplexity":
        base = calib_nll(model, ids, batch)
        scores = []
        for layer in track(list(layers), "depth importance (skip one layer)"):
            with skipped([layer]):
                scores.append(calib_nll(model, ids, batch) - base)
        return scores
    sums = [0.0] * len(layers)
    count = [0]

    def make_hook(i: int):
        def hook(mod, args, kwargs, output):
            x = layer_input(args, kwargs).float()
            y = (output[0] if isinstance(output, tuple) else output).float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
            sums[i] += float((1 - cos).sum())
            if i == 0:
                count[0] += cos.numel()
        return hook

    handles = [m.register_forward_hook(make_hook(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        for i in track(range(0, len(ids), batch), "depth importance (block influence)"):
            model(ids[i:i + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [s / count[0] for s in sums]


def choose_layers(scores: Sequence[float], keep: int) -> list[int]:
    """Indices (ascending) of the ``keep`` most important layers; ties keep the earlier layer."""
    n = len(scores)
    if keep > n:
        raise ConfigError(f"prune.layers: {keep} is larger than the model's {n} layers")
    if keep == n:
        raise ConfigError(f"prune.layers: {keep} equals the model's {n} layers (nothing to prune)")
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])


def drop_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A new model holding only the layers ``keep`` (renumbered in order), config fixed to match."""
    prefix, layers = decoder_layers(model)
    cfg = copy.deepcopy(model.config)
    n = len(layers)
    cfg.num_hidden_layers = len(keep)
    for key in _PER_LAYER_KEYS:
        vals = getattr(cfg, key, None)
        if isinstance(vals, (list, tuple)) and len(vals) == n:
            setattr(cfg, key, [vals[i] for i in keep])
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    state = {}
    for name, t in model.state_dict().items():
        m = pattern.match(name)
        if m is None:
            state[name] = t
        elif int(m.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(m.group(1))]}.{name[m.end():]}"] = t
    return build_like(model, cfg, state)
