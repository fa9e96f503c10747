"""Width pruning: remove MLP channels and attention heads by activation-based importance (Minitron).

    imp = width_importance(model, calib_ids)
    small = prune_width(model, imp, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2)

Importance, per layer, from one calibration pass:

- MLP channel c: mean |a_c| x ||down_proj[:, c]||, with a = act(gate(x)) * up(x) the input of down_proj
  (the channel's typical contribution to the residual stream);
- query head h: the same for its head_dim slice of o_proj's input, summed over the slice.

Grouped KV heads are respected: a key/value head is kept or removed with its whole group; a kept
group keeps its ``num_attention_heads / num_key_value_heads`` best query heads. Sizes are uniform
across layers (a transformers config holds one of each), indices differ per layer. ``head_dim`` is
written into the config, since ``hidden_size`` no longer equals heads x head_dim. The hidden size
(embedding width) is not pruned.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import track
from .model_ops import attention_and_mlp, build_like, decoder_layers


@dataclasses.dataclass
class WidthImportance:
    channels: list[torch.Tensor]  # per layer: [intermediate_size]
    heads: list[torch.Tensor]  # per layer: [num_attention_heads]


def head_dim_of(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


@torch.inference_mode()
def width_importance(model: nn.Module, ids: torch.Tensor, batch: int = 8) -> WidthImportance:
    _, layers = decoder_layers(model)
    hd = head_dim_of(model.config)
    mods = [attention_and_mlp(layer, f"layer {i}") for i, layer in enumerate(layers)]
    abs_down = [torch.zeros(m.down_proj.in_features, dtype=torch.float64) for _, m in mods]
    abs_o = [torch.zeros(a.o_proj.in_features, dtype=torch.float64) for a, _ in mods]
    n = [0]

    def pre(acc: torch.Tensor, count: bool):
        def hook(mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc.add_(x.abs().sum(0).double())
            if count:
                n[0] += x.shape[0]
        return hook

    handles = []
    for i, (a, m) in enumerate(mods):
        handles.append(m.down_proj.register_forward_pre_hook(pre(abs_down[i], i == 0)))
        handles.append(a.o_proj.register_forward_pre_hook(pre(abs_o[i], False)))
    try:
        for s in track(range(0, len(ids), batch), "width importance (activations)"):
            model(ids[s:s + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    channels, heads = [], []
    for i, (a, m) in enumerate(mods):
        channels.append((abs_down[i] / n[0]).float() * m.down_proj.weight.detach().float().norm(dim=0))
        per_col = (abs_o[i] / n[0]).float() * a.o_proj.weight.detach().float().norm(dim=0)
        heads.append(per_col.reshape(-1, hd).sum(1))
    return WidthImportance(channels, heads)


def check_targets(config, intermediate_size: int | None, num_heads: int | None, num_kv: int | None) -> tuple[int, int, int]:
    """Fill unset targets from the model and refuse sizes the model cannot be pruned to."""
    old_ffn, old_h, old_kv = config.intermediate_size, config.num_attention_heads, config.num_key_value_heads
    ffn = intermediate_size or old_ffn
    kv = num_kv or (old_kv if num_heads is None or num_heads % old_kv == 0 and num_heads >= old_kv else None)
    if kv is None:
        raise ConfigError(f"prune.num_key_value_heads: give it too; num_attention_heads {num_heads} is not a "
                          f"multiple of the model's {old_kv} KV heads")
    heads = num_heads or kv * (old_h // old_kv)
    for field, new, old in (("intermediate_size", ffn, old_ffn), ("num_attention_heads", heads, old_h),
                            ("num_key_value_heads", kv, old_kv)):
        if new > old:
            raise ConfigError(f"prune.{field}: {new} is larger than the model's {old}")
    if heads % kv:
        raise ConfigError(f"prune.num_attention_heads: {heads} is not a multiple of num_key_value_heads {kv}")
    if heads // kv > old_h // old_kv:
        raise ConfigError(f"prune.num_attention_heads: {heads} query heads over {kv} KV heads is "
                          f"{heads // kv} per group, more than the model's {old_h // old_kv}; keep more KV heads")
    if (ffn, heads, kv) == (old_ffn, old_h, old_kv):
        raise ConfigError(f"prune.width: targets equal the model's sizes (ffn={old_ffn}, heads={old_h}, "
                          f"kv_heads={old_kv}); nothing to prune")
    return ffn, heads, kv


def select_heads(scores: torch.Tensor, old_kv: int, heads: int, kv: int) -> tuple[list[int], list[int]]:
    """(query heads, KV heads) to keep, in new order: groups by importance of the heads they keep."""
    group = scores.numel() // old_kv
    per_group = heads // kv
    best = [sorted(range(g * group, (g + 1) * group), key=lambda h: (-float(scores[h]), h))[:per_group]
            for g in range(old_kv)]
    group_score = [sum(float(scores[h]) for h in best[g]) for g in range(old_kv)]
    kv_keep = sorted(sorted(range(old_kv), key=lambda g: (-group_score[g], g))[:kv])
    q_keep = [h for g in kv_keep for h in sorted(best[g])]
    return q_keep, kv_keep


def _rows(idx: list[int], hd: int) -> torch.Tensor:
    return torch.tensor([h * hd + j for h in idx for j in range(hd)], dtype=torch.long)


def prune_width(model: nn.Module, imp: WidthImportance, *, intermediate_size: int | None = None,
                num_attention_heads: int | None = None, num_key_value_heads: int | None = None
                ) -> tuple[nn.Module, dict]:
    """A new, physically smaller model and a per-layer report of what was kept."""
    cfg = copy.deepcopy(model.config)
    ffn, heads, kv = check_targets(cfg, intermediate_size, num_attention_heads, num_key_value_heads)
    prefix, layers = decoder_layers(model)
    hd = head_dim_of(cfg)
    state = dict(model.state_dict())
    report: dict = {"layers": {}}
    for i, layer in enumerate(layers):
        attn, mlp = attention_and_mlp(layer, f"{prefix}.{i}")
        ch = sorted(torch.topk(imp.channels[i], ffn).indices.tolist())
        q_keep, kv_keep = select_heads(imp.heads[i], cfg.num_key_value_heads, heads, kv)
        ch_t, q_rows, kv_rows = torch.tensor(ch), _rows(q_keep, hd), _rows(kv_keep, hd)
        p = f"{prefix}.{i}."
        for name, rows in (("mlp.gate_proj", ch_t), ("mlp.up_proj", ch_t), ("self_attn.q_proj", q_rows),
                           ("self_attn.k_proj", kv_rows), ("self_attn.v_proj", kv_rows)):
            state[p + name + ".weight"] = state[p + name + ".weight"][rows].clone()
            if p + name + ".bias" in state:
                state[p + name + ".bias"] = state[p + name + ".bias"][rows].clone()
        state[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"][:, ch_t].clone()
        state[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"][:, q_rows].clone()
        report["layers"][str(i)] = {"query_heads_kept": q_keep, "kv_heads_kept": kv_keep,
                                    "channels_kept": len(ch),
                                    "channel_importance_kept": round(float(imp.channels[i][ch_t].sum() /
                                                                           imp.channels[i].sum()), 4)}
    report.update(intermediate_size=[cfg.intermediate_size, ffn], num_attention_heads=[cfg.num_attention_heads, heads],
                  num_key_value_heads=[cfg.num_key_value_heads, kv], head_dim=hd)
    cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads = ffn, heads, kv
    cfg.head_dim = hd
    return build_like(model, cfg, state), report
