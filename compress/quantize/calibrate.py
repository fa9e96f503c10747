"""Calibration that streams layer by layer: peak memory is the model plus one layer's activations.

    ids = calibration_ids(tokenizer, load_text("moby-dick-calib"), samples=128, seq_len=512)
    stream_layers(model, ids, batch=8, targets=plan.by_layer(), process=quantize_one_layer)

The first decoder layer's inputs are captured with a hook (the run stops there), and every layer's
keyword arguments (position embeddings, masks: Gemma's sliding and full layers differ) are captured
once from a single sample. Then each layer: one pass collects the input statistics of its linears,
``process`` quantizes it, a second pass computes its outputs with the quantized weights, which become
the next layer's inputs. Errors therefore propagate as they will at inference time.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Callable

import torch
from torch import nn

from ..data import Text, tokenize_text, uses_bos
from ..errors import DataError
from ..memory import trim_heap
from ..progress import track
from .layers import Target, decoder_layers

log = logging.getLogger(__name__)


def calibration_ids(tokenizer, text: Text, *, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens (BOS first where the tokenizer uses one), drawn
    without overlap from ``text`` with a fixed seed. DataError when the text is too short."""
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    span = seq_len - (bos is not None)
    need = samples * span
    # Tokenizing a whole book costs seconds; a prefix of ~16 characters per needed token is plenty
    # for any tokenizer (English averages about 4), and the full text is the fallback.
    ids = tokenize_text(tokenizer, text.text[:need * 16])
    if len(ids) < need and need * 16 < len(text.text):
        ids = tokenize_text(tokenizer, text.text)
    if len(ids) < need:
        raise DataError(f"{text.name}: calibration text too short: {len(ids)} tokens found, {need} needed "
                        f"({samples} samples x {span} tokens{' + BOS' if bos is not None else ''})")
    starts = sorted(random.Random(seed).sample(range(len(ids) // span), samples))
    rows = [([bos] if bos is not None else []) + ids[s * span:(s + 1) * span] for s in starts]
    return torch.tensor(rows, dtype=torch.long)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (nothing past the captured layer is computed)."""


def _split(args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any]]:
    if args:
        hidden, rest = args[0], dict(kwargs)
    else:
        rest = dict(kwargs)
        hidden = rest.pop("hidden_states")
    rest["past_key_values"] = None
    rest["use_cache"] = False
    return hidden, rest


@torch.no_grad()
def capture(model: nn.Module, ids: torch.Tensor, batch: int, *, all_layers: bool = False
            ) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, Any]]]:
    """Inputs of the first decoder layer for every row of ``ids`` ([N, L, hidden], fp32) and each
    layer's keyword arguments (captured with batch 1, so they broadcast over any batch).

    With ``all_layers``, the inputs of every layer (a list) instead: used by the sensitivity analysis
    on a few tokens, never on the full calibration set.
    """
    _, layers = decoder_layers(model)
    kwargs: list[dict[str, Any]] = [{} for _ in layers]
    inputs: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]

    def pre(i: int):
        def hook(_mod, args, kw):
            hidden, rest = _split(args, kw)
            kwargs[i] = rest
            inputs[i] = hidden.detach().clone()
            if i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        try:
            model(ids if all_layers else ids[:1], use_cache=False)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    if all_layers:
        return inputs, kwargs
    first = torch.empty((ids.shape[0],) + tuple(inputs[0].shape[1:]), dtype=torch.float32)
    first[:1] = inputs[0]
    stash: dict[str, torch.Tensor] = {}

    def stop(_mod, args, kw):
        stash["x"], _ = _split(args, kw)
        raise _Stop

    handle = layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for a in range(1, ids.shape[0], batch):
            try:
                model(ids[a:a + batch], use_cache=False)
            except _Stop:
                first[a:a + batch] = stash.pop("x")
    finally:
        handle.remove()
    return first, kwargs


def layer_forward(layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@dataclasses.dataclass
class InputStats:
    """Second moments (for GPTQ's Hessian and the output-error loss) and mean |x| (for AWQ) of one
    linear input, shared by every linear that reads the same tensor (q/k/v, gate/up)."""

    xtx: torch.Tensor
    abs_sum: torch.Tensor
    n: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.xtx.addmm_(x.T, x)
        self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """E[x xᵀ]: the output error of a weight change ΔW is tr(ΔW H ΔWᵀ) per token."""
        return self.xtx / max(self.n, 1)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)


@torch.no_grad()
def collect_stats(layer: nn.Module, targets: dict[str, Target], x: torch.Tensor, kwargs: dict[str, Any],
                  batch: int) -> dict[str, InputStats]:
    """Run the layer over all calibration rows, accumulating the input statistics of ``targets``."""
    stats: dict[str, InputStats] = {}
    seen: list[tuple[torch.Tensor, InputStats]] = []  # inputs of this pass, kept alive so `is` is reliable

    def hook(name: str):
        def fn(_mod, args):
            inp = args[0]
            for t, s in seen:
                if t is inp:
                    break
            else:
                s = stats.get(name)
                if s is None:
                    d = inp.shape[-1]
                    s = InputStats(torch.zeros(d, d), torch.zeros(d))
                s.add(inp)
                seen.append((inp, s))
            stats[name] = s
        return fn

    handles = [t.module.register_forward_pre_hook(hook(n)) for n, t in targets.items()]
    try:
        for a in range(0, x.shape[0], batch):
            seen.clear()
            layer_forward(layer, x[a:a + batch], kwargs)
    finally:
        seen.clear()
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def stream_layers(model: nn.Module, ids: torch.Tensor, batch: int, targets: dict[int, dict[str, Target]],
                  process: Callable[[int, nn.Module, dict[str, Target], dict[str, InputStats], torch.Tensor,
                                     dict[str, Any]], None],
                  description: str = "calibrating",
                  finish: Callable[[torch.Tensor], None] | None = None) -> None:
    """Capture, then for each decoder layer: statistics, ``process(i, layer, targets, stats, inputs,
    kwargs)`` (quantizes the layer in place), outputs. With ``finish``, the last layer's outputs (the
    quantized decoder's, before the final norm) are computed too and handed to it."""
    _, layers = decoder_layers(model)
    x, kwargs = capture(model, ids, batch)
    for i in track(range(len(layers)), description, total=len(layers)):
        layer = layers[i]
        mine = targets.get(i, {})
        if mine:
            process(i, layer, mine, collect_stats(layer, mine, x, kwargs[i], batch), x, kwargs[i])
            # Hessians, their inverses and GPTQ's work copies are freed by now, but glibc keeps the
            # pages: without a trim the stage grew ~10 MB per layer (+240 MB over SmolLM2's 30 layers)
            trim_heap()
        if i == len(layers) - 1 and finish is None:
            break  # nothing reads the last layer's outputs
        for a in range(0, x.shape[0], batch):
            x[a:a + batch] = layer_forward(layer, x[a:a + batch], kwargs[i])
        log.info("calibrated layer %d/%d", i + 1, len(layers))
    if finish is not None:
        finish(x)
