"""Evaluation against the Runtime protocol: perplexity, KL and top-1 agreement, multiple choice.

    cfg = EvalConfig(max_tokens=8192)
    result = evaluate(runtime, tokenizer, cfg, reference=ref_runtime)

Every runtime (PyTorch, onnxruntime, llama.cpp) gets the same token ids and the same arithmetic, so
their numbers are comparable. Window rules (BOS, stride) are in :mod:`compress.data`.

- perplexity: exp(mean NLL) over every scored token of the text;
- KL: mean over the same tokens of KL(reference || model) of the next-token distributions;
- top-1 agreement: share of those tokens where both put the same token first;
- multiple choice: BIG-bench prompts; each choice scored by the sum of its tokens' log-likelihoods
  given the prompt; accuracy = share of examples where the gold choice scores highest. ``mc_limit``
  examples per task are drawn with a fixed seed (0 = all).
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .config import StageConfig, register_config
from .data import TASKS, load_mc_task, load_text, text_windows, tokenize_text, uses_bos
from .errors import ArtifactError, ConfigError, NonFiniteError
from .logits import TextScore, log_probs, target_logp
from .memory import trim_heap
from .progress import track


@register_config("eval")
@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(StageConfig):
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ("data", "tasks")  # by content in the id
    data: str = "moby-dick"
    window: int = 512
    stride: int = 512
    max_tokens: int = 8192
    tasks: tuple[str, ...] = tuple(TASKS)
    mc_limit: int = 100
    threads: int = 2

    def validate(self) -> None:
        self.require_at_least(1, "window", "stride", "max_tokens", "threads")
        self.require_at_least(0, "mc_limit", note=" (0 = every example)")
        if self.stride > self.window:
            raise ConfigError(f"eval.stride: {self.stride} is larger than eval.window {self.window}")


@dataclasses.dataclass
class EvalResult:
    runtime: str
    data: str
    tokens: int
    windows: int
    bos: bool
    perplexity: float
    kl: float | None = None
    top1_agreement: float | None = None
    mc: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Everything the evaluation reads, tokenized and checked, before any weights are loaded."""

    data: str
    windows: list
    bos: bool
    tasks: list


def prepare_eval(tokenizer, cfg: EvalConfig) -> EvalPlan:
    """Load and tokenize the text, cut the windows and read the tasks; DataError for bad data."""
    text = load_text(cfg.data)
    bos_id = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    ids = tokenize_text(tokenizer, text.text, cfg.max_tokens)
    windows = text_windows(ids, window=cfg.window, stride=cfg.stride, bos_id=bos_id, source=text.name)
    return EvalPlan(text.name, windows, bos_id is not None, [load_mc_task(t) for t in cfg.tasks])


def evaluate(runtime, tokenizer, cfg: EvalConfig, *, reference=None, plan: EvalPlan | None = None) -> EvalResult:
    """Run the text and multiple-choice evaluation of ``cfg`` through ``runtime``."""
    plan = plan or prepare_eval(tokenizer, cfg)
    windows, tasks = plan.windows, plan.tasks
    t0 = time.perf_counter()
    scores = score_windows(runtime, windows, reference=reference)
    result = EvalResult(runtime=runtime.name, data=plan.data, tokens=scores["tokens"], windows=len(windows),
                        bos=plan.bos, perplexity=scores["perplexity"], kl=scores.get("kl"),
                        top1_agreement=scores.get("top1_agreement"))
    result.seconds["text"] = round(time.perf_counter() - t0, 2)
    for task in tasks:
        t1 = time.perf_counter()
        result.mc[task.name] = mc_accuracy(runtime, tokenizer, task, limit=cfg.mc_limit)
        result.seconds[task.name] = round(time.perf_counter() - t1, 2)
    return result


def score_windows(runtime, windows, *, reference=None) -> dict[str, float]:
    """Perplexity of ``runtime`` over the windows; with a reference, KL and top-1 agreement too (the
    arithmetic: :class:`compress.logits.TextScore`)."""
    score = TextScore()
    for w in track(windows, f"scoring text ({runtime.name})"):
        logits = runtime.logits(w.input_ids)
        ref = reference.logits(w.input_ids) if reference is not None else None
        if ref is not None and logits.shape != ref.shape:
            raise ArtifactError(f"{runtime.name} returned logits of shape {logits.shape}, the reference "
                                f"{ref.shape}; not the same model or vocabulary")
        score.add_window(logits, w.input_ids, w.first_target, ref)
        # a window's logits are 100 MB at 512 tokens x 49,152 vocabulary: let them go before the next
        # window's are computed, not after (and the log-softmax blocks' heap pages with them)
        del logits, ref
        trim_heap()
    n = score.n
    if not score.mean_nll < 709:  # NaN, inf, or exp() past the float range: never a perplexity printed as nan
        raise NonFiniteError(f"{runtime.name}: mean negative log-likelihood is {score.mean_nll:.4g} over {n} tokens; "
                             "the model's logits are not finite (NaN/inf weights or an overflow) - no perplexity")
    out = {"tokens": n, "perplexity": score.perplexity}
    if reference is not None:
        if not math.isfinite(score.kl):
            raise NonFiniteError(f"{reference.name}: KL against the reference is {score.kl} over {n} tokens; the "
                                 "reference's logits are not finite")
        out["kl"] = score.mean_kl
        out["top1_agreement"] = score.top1
    return out


class StoredLogits:
    """A runtime that replays logits written earlier (same ``logits(ids)`` call as every runtime)."""

    name = "reference"

    def __init__(self, where: str | Path | None = None) -> None:
        # unnamed: removed by the OS when closed or when the process dies, never left in an artifact
        self._file = tempfile.TemporaryFile(dir=where)
        self._index: dict[tuple[int, ...], tuple[int, tuple[int, ...]]] = {}

    @classmethod
    def of(cls, runtime, windows, where: str | Path | None = None) -> "StoredLogits":
        """``runtime``'s logits on every window, computed now."""
        stored = cls(where)
        for w in windows:
            stored.add(w.input_ids, runtime.logits(w.input_ids))
        return stored

    def add(self, token_ids: Sequence[int], logits: np.ndarray) -> None:
        a = np.ascontiguousarray(logits, dtype=np.float32)
        self._file.seek(0, 2)
        self._index[tuple(token_ids)] = (self._file.tell(), a.shape)
        a.tofile(self._file)

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        offset, shape = self._index[tuple(token_ids)]  # KeyError: ids that were never stored
        self._file.seek(offset)
        a = np.fromfile(self._file, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)
        return a[-last:] if last else a

    def close(self) -> None:
        self._file.close()


def mc_accuracy(runtime, tokenizer, task, *, limit: int = 0) -> dict[str, float]:
    """Accuracy on one multiple-choice task, with chance level for context."""
    examples = list(task.examples)
    if limit and len(examples) > limit:
        examples = random.Random(0).sample(examples, limit)
    bos = [tokenizer.bos_token_id] if uses_bos(tokenizer) else []
    correct = 0
    for ex in track(examples, f"{task.name} ({runtime.name})"):
        ctx, lead = ex.prompt.rstrip(" "), " " * (len(ex.prompt) - len(ex.prompt.rstrip(" ")))
        ctx_tokens = tokenizer(ctx, add_special_tokens=False).input_ids
        ctx_ids = bos + ctx_tokens
        scores = []
        for choice in ex.choices:
            ids = ctx_ids + _continuation_ids(tokenizer, ctx, ctx_tokens, lead + choice)
            cont_ids = ids[len(ctx_ids):]
            # rows for positions len(ctx_ids)-1 .. len(ids)-2 predict the continuation's tokens
            rows = runtime.logits(ids, last=len(cont_ids) + 1)[:-1]
            scores.append(float(target_logp(log_probs(rows), cont_ids).sum()))
        correct += int(int(np.argmax(scores)) == ex.correct)
    chance = float(np.mean([1 / len(e.choices) for e in examples]))
    return {"accuracy": correct / len(examples), "n": len(examples), "chance": chance}


def _continuation_ids(tokenizer, ctx: str, ctx_tokens: list[int], cont: str) -> list[int]:
    """Tokens of ``cont`` as they appear after ``ctx`` (joint tokenization when it keeps the
    context's tokens intact, else the continuation alone)."""
    joint = tokenizer(ctx + cont, add_special_tokens=False).input_ids
    n = len(ctx_tokens)
    if joint[:n] == ctx_tokens and len(joint) > n:
        return joint[n:]
    return tokenizer(cont, add_special_tokens=False).input_ids
