"""The tokens every diagnosis measures on, and KL(reference || model) over them.

The windows are the quantize report's own (scoring.eval_windows: held-in text, BOS first), and the
positions are exactly those :func:`compress.evaluate.score_windows` scores, so the total KL here is the
figure ``compress eval``/``bench`` print for the same tokens. Windows of one length are batched.

    toks = diagnosis_tokens(tokenizer, "moby-dick-calib", 1024)
    ref = toks.reference_logp(ref_model)          # one log-softmax per batch, kept for every run
    kl = toks.kl(ref, [model(ids).logits for ids in toks.batches])
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from ..logits import log_probs, mean_kl
from ..quantize.scoring import eval_windows


@dataclasses.dataclass
class Batch:
    ids: torch.Tensor  # [n, L] token ids, every row one window of the same length
    first_target: int  # positions first_target-1 .. L-2 are scored (as score_windows does)

    @property
    def positions(self) -> slice:
        return slice(self.first_target - 1, self.ids.shape[1] - 1)

    @property
    def scored(self) -> int:
        return self.ids.shape[0] * (self.ids.shape[1] - self.first_target)


@dataclasses.dataclass
class DiagnosisTokens:
    data: str
    windows: list  # compress.data windows, for runtimes (score_windows)
    batches: list[Batch]

    @property
    def count(self) -> int:
        return sum(b.scored for b in self.batches)

    @torch.no_grad()
    def reference_logp(self, model) -> list[torch.Tensor]:
        """log-softmax of ``model``'s logits at the scored positions, one tensor per batch."""
        return [log_probs(model(b.ids, use_cache=False).logits[:, b.positions]) for b in self.batches]

    @torch.no_grad()
    def kl(self, ref: Sequence[torch.Tensor], logits_of: Callable[[int, Batch], torch.Tensor]) -> float:
        """Mean KL(reference || model) over every scored position; ``logits_of(i, batch)`` gives the
        model's logits of batch ``i`` ([n, L, vocab], every position)."""
        total = 0.0
        for i, b in enumerate(self.batches):
            logits = logits_of(i, b)[:, b.positions]
            total += mean_kl(ref[i].reshape(-1, ref[i].shape[-1]), logits.reshape(-1, logits.shape[-1])) * b.scored
        return max(total / self.count, 0.0)


def diagnosis_tokens(tokenizer, data: str, tokens: int) -> DiagnosisTokens:
    """The first ``tokens`` of ``data`` cut as the quantize report cuts them, batched by length."""
    name, windows = eval_windows(tokenizer, data, tokens)
    groups: dict[tuple[int, int], list] = {}
    for w in windows:
        groups.setdefault((len(w.input_ids), w.first_target), []).append(w.input_ids)
    batches = [Batch(torch.tensor(rows, dtype=torch.long), ft) for (_, ft), rows in groups.items()]
    return DiagnosisTokens(name, windows, batches)
