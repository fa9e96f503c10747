"""The accuracy phase: every runtime × artifact scored against the reference on the same token ids.

Windows are the outer loop: the reference's logits for a window are computed once and compared with
every loaded runtime's, then dropped (full-vocabulary logits of thousands of tokens do not fit
comfortably: 8k tokens of Gemma's 262k vocabulary are 8.6 GB in float32). The arithmetic is
:func:`compress.evaluate.score_windows`' (log-softmax in 128-position blocks, KL(reference || model)).
"""

from __future__ import annotations

import math
from typing import Any, Hashable

import numpy as np
import torch

from compress.errors import ArtifactError
from compress.evaluate import EvalPlan, mc_accuracy
from compress.progress import track

_CHUNK = 128


def _logp(rows: np.ndarray) -> torch.Tensor:
    return torch.log_softmax(torch.from_numpy(np.ascontiguousarray(rows)).float(), -1)


def score_text(reference, runtimes: dict[Hashable, Any], plan: EvalPlan) -> dict[Hashable, dict[str, float]]:
    """Perplexity, KL and top-1 agreement of each runtime (keyed as given) and of the reference
    (key ``None``) over ``plan.windows``."""
    sums = {k: {"nll": 0.0, "kl": 0.0, "agree": 0, "n": 0} for k in [None, *runtimes]}
    for w in track(plan.windows, f"scoring text ({len(runtimes) + 1} models)"):
        ref = reference.logits(w.input_ids)
        targets = torch.tensor(w.input_ids[w.first_target:])
        for key, rt in [(None, None), *runtimes.items()]:
            logits = ref if rt is None or rt is reference else rt.logits(w.input_ids)
            if logits.shape != ref.shape:
                raise ArtifactError(f"{key}: {rt.name} returned logits of shape {logits.shape}, the reference "
                                    f"{ref.shape}; not the same model or vocabulary")
            s = sums[key]
            for a in range(0, len(targets), _CHUNK):
                lo, hi = w.first_target - 1 + a, w.first_target - 1 + min(a + _CHUNK, len(targets))
                tgt = targets[a:a + _CHUNK]
                ref_logp = _logp(ref[lo:hi])
                logp = ref_logp if logits is ref else _logp(logits[lo:hi])
                s["nll"] += float(-logp.gather(1, tgt[:, None]).sum())
                s["kl"] += float((ref_logp.exp() * (ref_logp - logp)).sum())
                s["agree"] += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
                s["n"] += len(tgt)
    out = {}
    for key, s in sums.items():
        n = s["n"]
        # float rounding can leave -1e-9 for identical models
        out[key] = {"tokens": n, "perplexity": math.exp(s["nll"] / n), "kl": max(s["kl"] / n, 0.0),
                    "top1": s["agree"] / n}
    return out


def score_mc(runtime, tokenizer, plan: EvalPlan, limit: int) -> dict[str, float]:
    """Multiple-choice accuracy per task (the evaluation of ``compress eval``), token ids from the
    reference tokenizer whatever the runtime."""
    return {task.name: mc_accuracy(runtime, tokenizer, task, limit=limit)["accuracy"] for task in plan.tasks}
