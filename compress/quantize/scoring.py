"""The report's scoring: perplexity of a changed model and KL against the unchanged one, on held-in text.

    ref = store_logits(lm.model, lm.tokenizer, "moby-dick-calib", 1024, where=tmp_dir)  # before quantize_
    quantize_(lm.model, cfg, calib)
    report["eval"] = score_against(lm.model, ref, lm.tokenizer, "moby-dick-calib", 1024)

One copy of the model: the unchanged model's logits are computed before the weights change and parked
in an unnamed temporary file, one window at a time, instead of keeping a deep copy of the fp32 model
(+540 MB on SmolLM2-135M) next to the changed one. Scoring reads them back window by window, so
memory holds at most one window of logits per model (512 tokens x 49,152 vocabulary x 4 B = 100 MB).
The numbers are the same: the stored float32 logits are exactly those the copy would have produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import load_text, text_windows, tokenize_text, uses_bos
from ..evaluate import StoredLogits


def eval_windows(tokenizer, data: str, tokens: int) -> tuple[str, list]:
    """(text name, windows) of the first ``tokens`` of ``data``: at most 512 tokens each, BOS first
    where the tokenizer uses one."""
    text = load_text(data)
    ids = tokenize_text(tokenizer, text.text[:tokens * 12], max_tokens=tokens)
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    window = min(512, len(ids) + (bos is not None))
    windows = text_windows(ids, window=window, stride=window - (bos is not None), bos_id=bos, source=text.name)
    return text.name, windows


def store_logits(model, tokenizer, data: str, tokens: int, *, where: str | Path | None = None) -> StoredLogits:
    """Run ``model`` over the scoring windows now and keep its logits on disk (see the module doc)."""
    from runtimes.torch_runtime import TorchRuntime

    from ..models import LoadedModel, ModelSource

    _, windows = eval_windows(tokenizer, data, tokens)
    runtime = TorchRuntime().use(LoadedModel(model, tokenizer, ModelSource("in-memory", "hf_dir"), "reference"))
    return StoredLogits.of(runtime, windows, where)


def score_against(model, reference, tokenizer, data: str, tokens: int) -> dict[str, Any]:
    """Perplexity of both models and KL(reference || model) on the first ``tokens`` of ``data``.
    ``reference`` is a model, or the :class:`StoredLogits` of one (:func:`store_logits`)."""
    from runtimes.torch_runtime import TorchRuntime

    from ..evaluate import score_windows
    from ..models import LoadedModel, ModelSource

    name, windows = eval_windows(tokenizer, data, tokens)
    src = ModelSource("in-memory", "hf_dir")
    q = TorchRuntime().use(LoadedModel(model, tokenizer, src, "quantized"))
    r = reference if isinstance(reference, StoredLogits) else \
        TorchRuntime().use(LoadedModel(reference, tokenizer, src, "reference"))
    sq = score_windows(q, windows, reference=r)
    sr = score_windows(r, windows)
    return {"data": name, "tokens": sq["tokens"], "perplexity_reference": sr["perplexity"],
            "perplexity": sq["perplexity"], "perplexity_ratio": sq["perplexity"] / sr["perplexity"],
            "kl": sq["kl"], "top1_agreement": sq["top1_agreement"]}
