"""Distillation losses.

    kd = kd_loss(student_logits, teacher_logits, temperature=2.0)      # T^2 KL(teacher_T || student_T)
    hs = hidden_loss(student_hidden, teacher_hidden, [(0, 0), (1, 2)])

The T^2 factor keeps the gradient scale independent of T (Hinton et al. 2015). The KL is computed in
chunks of positions so that a 49k-262k vocabulary does not hold several float32 copies of the whole
batch's logits at once.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_CHUNK = 512  # positions per KL block


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over positions of T^2 x KL(softmax(teacher/T) || softmax(student/T))."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: student {tuple(student_logits.shape)}, "
                         f"teacher {tuple(teacher_logits.shape)}")
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v)
    t = teacher_logits.reshape(-1, v)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for i in range(0, s.shape[0], _CHUNK):
        ls = F.log_softmax(s[i:i + _CHUNK].float() / temperature, dim=-1)
        lt = F.log_softmax(t[i:i + _CHUNK].float() / temperature, dim=-1)
        total = total + F.kl_div(ls, lt, log_target=True, reduction="sum")
    return total * temperature ** 2 / s.shape[0]


def ce_loss(student_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the training text itself."""
    logits = student_logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def hidden_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                layer_map: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Mean over mapped pairs of MSE(student layer s output, teacher layer t output), each normalised
    by the teacher's mean square so that layers with large residual norms do not dominate.
    Index i means the output of decoder layer i (``hidden_states[i + 1]`` of transformers)."""
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for s, t in layer_map:
        hs, ht = student_hidden[s + 1].float(), teacher_hidden[t + 1].float()
        total = total + F.mse_loss(hs, ht) / ht.pow(2).mean().clamp_min(1e-6)
    return total / max(len(layer_map), 1)
