"""Training data: text -> one token stream -> fixed-length sequences, in an order that is a pure
function of (seed, sample index), so a resumed run sees exactly the batches it would have seen.

    seqs = TokenSequences.from_text(tokenizer, load_text("moby-dick-calib"), seq_len=256)
    order = SampleOrder(len(seqs), seed=0)
    rows = [seqs[order[k]] for k in range(step * batch, (step + 1) * batch)]

Sample k belongs to epoch k // n and takes position k % n of that epoch's permutation (seeded with
seed + epoch). No sampler state needs saving: the step number is enough.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from ..data import Text, tokenize_text, uses_bos
from ..errors import DataError


class TokenSequences(Dataset):
    """Non-overlapping windows of ``seq_len`` tokens (BOS first where the tokenizer uses one)."""

    def __init__(self, rows: torch.Tensor, source: str):
        self.rows, self.source = rows, source

    @classmethod
    def from_text(cls, tokenizer, text: Text, *, seq_len: int) -> TokenSequences:
        bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
        span = seq_len - (bos is not None)
        ids = tokenize_text(tokenizer, text.text)
        n = len(ids) // span
        if n == 0:
            raise DataError(f"{text.name}: training text too short: {len(ids)} tokens, one sequence needs {span}")
        t = torch.tensor(ids[:n * span], dtype=torch.long).reshape(n, span)
        if bos is not None:
            t = torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)
        return cls(t, text.name)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


class SampleOrder:
    """order[k] = the sequence index of global sample k (epochs reshuffled, reproducible from the seed)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]

    def __getitem__(self, k: int) -> int:
        return int(self._perm(k // self.n)[k % self.n])


class OrderedSamples(Dataset):
    """Samples ``start .. start + count - 1`` of the order, as a map-style dataset: a DataLoader with a
    sequential sampler (what accelerate shards across processes) yields the same batches every time."""

    def __init__(self, seqs: TokenSequences, order: SampleOrder, start: int, count: int):
        self.seqs, self.order, self.start, self.count = seqs, order, start, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.seqs[self.order[self.start + i]]


def check_enough(seqs: TokenSequences, *, steps: int, global_batch: int, max_epochs: float, seq_len: int) -> float:
    """Epochs the run needs; DataError when that exceeds ``max_epochs`` (or one batch does not fit)."""
    need = steps * global_batch
    if len(seqs) < global_batch:
        raise DataError(f"{seqs.source}: too little training text: {len(seqs)} sequences of {seq_len} tokens, "
                        f"one batch needs {global_batch}")
    epochs = need / len(seqs)
    if epochs > max_epochs + 1e-9:
        have_steps = math.floor(len(seqs) * max_epochs / global_batch)
        raise DataError(f"{seqs.source}: too little training text for {steps} steps: {len(seqs)} sequences of "
                        f"{seq_len} tokens, the run needs {need} ({epochs:.2f} epochs > max_epochs {max_epochs:g}); "
                        f"use at most {have_steps} steps, more text, or a larger max_epochs")
    return epochs
