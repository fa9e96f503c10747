"""Logit comparison: the arithmetic of perplexity, KL(reference || model), top-1 agreement and max |dlogit|.

Every place that scores or compares logits calls this module: evaluation (``compress eval``, the quantize
and prune reports), bench's accuracy phase, diagnose, the GGUF import check and both export validations.
Two precisions, each where it is needed:

- **Text scores**, float32 in torch, streamed: windows of hundreds of positions over vocabularies up to
  262k (a float64 window of Gemma's would be 1 GB), summed block by block in :class:`TextScore`.

      score = TextScore()
      score.add_window(logits, window.input_ids, window.first_target, ref=ref_logits)
      score.perplexity, score.mean_kl, score.top1

- **Check comparisons**, float64 in numpy, on a few dozen fixed check ids where a tolerance of 1e-6 on
  the KL must not drown in float32 rounding: :func:`compare` (per position, then summarized).

      c = compare(torch_logits, llamacpp_logits)
      c.kl_mean, c.top1_agreement, c.max_abs, c.worst_kl_position
      perplexity(c.ref_logp, ids), perplexity(c.got_logp, ids)

KL is always KL(reference || model) = sum p_ref * (log p_ref - log p_model) over the vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

CHUNK = 128  # positions per float32 log-softmax block: bounds memory with Gemma's 262k vocabulary


# --- text scores: float32, torch, streamed ------------------------------------------------------------

def log_probs(rows):
    """float32 log-softmax over the last axis of a numpy array or a tensor (a torch.Tensor back).

    >>> log_probs(np.zeros((1, 4), np.float32)).exp()
    tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    import torch

    if not isinstance(rows, torch.Tensor):
        rows = torch.from_numpy(np.ascontiguousarray(rows))
    return torch.log_softmax(rows.float(), -1)


def kl_terms(ref_logp, logp):
    """p_ref * (log p_ref - log p_model), element by element: KL(reference || model) once summed over the
    vocabulary (the last axis)."""
    return ref_logp.exp() * (ref_logp - logp)


def kl_per_position(ref_logp, logp):
    """KL(reference || model) at each position, from two log-probability tensors."""
    return kl_terms(ref_logp, logp).sum(-1)


def mean_kl(ref_logp, logits) -> float:
    """Mean over positions of KL(reference || model), from the reference's log-probabilities and the
    model's raw logits (rows of the same positions, any leading shape flattened by the caller)."""
    return float(kl_per_position(ref_logp, log_probs(logits)).mean())


def target_logp(logp, targets: Sequence[int]):
    """log p(target) at each position: ``logp[i, targets[i]]`` as a 1-d tensor."""
    import torch

    return logp.gather(1, torch.as_tensor(targets, dtype=torch.long)[:, None])[:, 0]


def token_nll(logits, ids: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood (float32) of ``ids[1:]`` given the logits at positions ``[:-1]``.

    >>> token_nll(np.zeros((3, 4), np.float32), [0, 1, 2])     # uniform over 4: log 4 each
    array([1.3862944, 1.3862944], dtype=float32)
    """
    logp = log_probs(np.asarray(logits[: len(ids) - 1]))
    return (-target_logp(logp, list(ids[1:]))).numpy()


@dataclasses.dataclass
class TextScore:
    """Running sums over scored positions: negative log-likelihood, and against a reference, KL and the
    count of positions where both put the same token first."""

    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    n: int = 0

    def add(self, logp, targets, ref_logp=None) -> None:
        """One block: ``logp`` [n, vocab] log-probabilities, ``targets`` [n] the tokens that follow."""
        self.nll += float(-target_logp(logp, targets).sum())
        if ref_logp is not None:
            self.kl += float(kl_terms(ref_logp, logp).sum())  # one sum over the block, as it always was
            self.agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
        self.n += len(targets)

    def add_window(self, logits: np.ndarray, input_ids: Sequence[int], first_target: int,
                   ref: np.ndarray | None = None) -> None:
        """Every position from ``first_target - 1`` on predicts the next id of ``input_ids``; ``logits`` (and
        the reference's ``ref``) are the window's rows [len(input_ids), vocab], scored in blocks of
        :data:`CHUNK` positions."""
        import torch

        targets = torch.tensor(list(input_ids[first_target:]))
        for a in range(0, len(targets), CHUNK):
            lo, hi = first_target - 1 + a, first_target - 1 + min(a + CHUNK, len(targets))
            ref_logp = None if ref is None else log_probs(ref[lo:hi])
            logp = ref_logp if logits is ref else log_probs(logits[lo:hi])
            self.add(logp, targets[a:a + CHUNK], ref_logp)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.n

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def mean_kl(self) -> float:
        return max(self.kl / self.n, 0.0)  # float rounding can leave -1e-9 for identical models

    @property
    def top1(self) -> float:
        return self.agree / self.n


# --- check comparisons: float64, numpy, per position ----------------------------------------------------

def log_softmax64(x: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis (torch-free).

    >>> np.exp(log_softmax64(np.array([[0.0, math.log(3.0)]])))
    array([[0.25, 0.75]])
    """
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found, per position (arrays) and summarized (numbers)."""

    ref_logp: np.ndarray  # [n, vocab] float64 log-probabilities
    got_logp: np.ndarray
    kl: np.ndarray  # [n] KL(reference || model)
    top1: np.ndarray  # [n] bool: the same token first
    abs_diff: np.ndarray  # [n] max |logit difference| of each row, float64
    positions: int
    kl_mean: float
    kl_max: float
    worst_kl_position: int
    top1_agreement: float
    first_disagreement: int | None
    max_abs: float
    worst_abs_position: int
    logit_range: float  # max |reference logit|


def compare(ref: np.ndarray, got: np.ndarray) -> Comparison:
    """Row by row, in float64: KL(ref || got), top-1 agreement, max |logit difference|.

    >>> c = compare(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[2.0, 0.5], [1.0, 0.0]]))
    >>> c.top1.tolist(), c.max_abs, c.first_disagreement
    ([True, False], 1.0, 1)
    """
    diff = np.abs(np.asarray(ref, dtype=np.float64) - np.asarray(got, dtype=np.float64)).max(-1)
    lp, lq = log_softmax64(ref), log_softmax64(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    top1 = ref.argmax(-1) == got.argmax(-1)
    return Comparison(ref_logp=lp, got_logp=lq, kl=kl, top1=top1, abs_diff=diff, positions=int(kl.shape[0]),
                      kl_mean=float(kl.mean()), kl_max=float(kl.max()), worst_kl_position=int(kl.argmax()),
                      top1_agreement=float(top1.mean()),
                      first_disagreement=None if top1.all() else int(np.argmin(top1)),
                      max_abs=float(diff.max()), worst_abs_position=int(diff.argmax()),
                      logit_range=float(np.abs(ref).max()))


def perplexity(logp: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean NLL) of ``ids[1:]`` under the log-probabilities of positions ``[:-1]`` (float64 rows).

    >>> perplexity(log_softmax64(np.zeros((3, 4))), [0, 1, 2])     # uniform over 4
    4.0
    """
    nll = -logp[np.arange(len(ids) - 1), list(ids[1:])]
    return float(math.exp(nll.mean()))
