"""The accuracy phase: every runtime × artifact scored against the reference on the same token ids.

Windows are the outer loop: the reference's logits for a window are computed once and compared with
every loaded runtime's, then dropped (full-vocabulary logits of thousands of tokens do not fit
comfortably: 8k tokens of Gemma's 262k vocabulary are 8.6 GB in float32). The arithmetic is
:class:`compress.logits.TextScore`, as :func:`compress.evaluate.score_windows`' (log-softmax in 128-position
blocks, KL(reference || model)).
"""

from __future__ import annotations

from typing import Any, Hashable

from compress.errors import ArtifactError
from compress.evaluate import EvalPlan, mc_accuracy
from compress.logits import TextScore
from compress.progress import track


def score_text(reference, runtimes: dict[Hashable, Any], plan: EvalPlan) -> dict[Hashable, dict[str, float]]:
    """Perplexity, KL and top-1 agreement of each runtime (keyed as given) and of the reference
    (key ``None``) over ``plan.windows``."""
    scores = {k: TextScore() for k in [None, *runtimes]}
    for w in track(plan.windows, f"scoring text ({len(runtimes) + 1} models)"):
        ref = reference.logits(w.input_ids)
        for key, rt in [(None, None), *runtimes.items()]:
            logits = ref if rt is None or rt is reference else rt.logits(w.input_ids)
            if logits.shape != ref.shape:
                raise ArtifactError(f"{key}: {rt.name} returned logits of shape {logits.shape}, the reference "
                                    f"{ref.shape}; not the same model or vocabulary")
            scores[key].add_window(logits, w.input_ids, w.first_target, ref)
    return {key: {"tokens": s.n, "perplexity": s.perplexity, "kl": s.mean_kl, "top1": s.top1}
            for key, s in scores.items()}


def score_mc(runtime, tokenizer, plan: EvalPlan, limit: int) -> dict[str, float]:
    """Multiple-choice accuracy per task (the evaluation of ``compress eval``), token ids from the
    reference tokenizer whatever the runtime."""
    return {task.name: mc_accuracy(runtime, tokenizer, task, limit=limit)["accuracy"] for task in plan.tasks}
