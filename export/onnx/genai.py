"""``genai_config.json``: what onnxruntime-genai's generator needs to drive our decoder graph.

    write_genai_config(art_dir, dims, config, generation_config, context_length=2048)

The fields are the ones onnxruntime-genai's model builder writes for a decoder-only model
(``onnxruntime_genai.models.builders.base``), naming our graph's inputs and outputs: ``input_ids``,
``attention_mask``, ``past_key_values.%d.key|value``, ``logits``, ``present.%d.key|value``. The
generator feeds only those; ``logits_to_keep`` keeps its default in the graph (every position), and
the generator takes the last one. ``past_present_share_buffer`` is what the graph declares (:mod:`.kv`): true for
our GroupQueryAttention graphs, so the generator, like our own loop, binds one buffer of ``max_length``
positions as both past and present and GroupQueryAttention reads the valid length from ``attention_mask``.

The same folder then runs in ``compress chat``, the harness (runtime ``onnxruntime``, our loop) and
onnxruntime-genai (runtime ``onnxruntime-genai``, its generator).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from runtimes.genai_folder import GENAI_CONFIG

from .arch import ModelDims

log = logging.getLogger(__name__)


def genai_config(dims: ModelDims, config, generation_config, *, context_length: int,
                 model_file: str = "model.onnx", share_buffer: bool = False) -> dict[str, Any] | None:
    """The ``genai_config.json`` dict, or None (said in the log) where onnxruntime-genai cannot describe
    the graph: it takes one head count and one KV-head count for every layer, which a pruned model
    with per-layer heads does not have."""
    heads = {ld.heads for ld in dims.layers}
    kv_heads = {ld.kv_heads for ld in dims.layers}
    if len(heads) != 1 or len(kv_heads) != 1:
        log.warning("export-onnx: no %s: onnxruntime-genai needs the same head counts in every layer "
                    "(attention heads %s, KV heads %s)", GENAI_CONFIG, sorted(heads), sorted(kv_heads))
        return None
    eos = _ids(_first(generation_config, config, "eos_token_id"))
    bos = _ids(_first(generation_config, config, "bos_token_id"))
    pad = _ids(_first(generation_config, config, "pad_token_id"))
    if not eos:
        eos = [-1]  # no end token: the generator stops at max_length
    archs = getattr(config, "architectures", None) or [config.model_type]
    kind = genai_type(archs[0])
    gen = generation_config
    return {
        "model": {
            "bos_token_id": bos[0] if bos else eos[0],
            "context_length": int(context_length),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": dims.head_dim,
                "hidden_size": dims.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads.pop(),
                "num_hidden_layers": len(dims.layers),
                "num_key_value_heads": kv_heads.pop(),
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad[0] if pad else eos[0],
            "type": kind,
            "vocab_size": dims.vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": bool(getattr(gen, "do_sample", False) or False),
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": int(context_length),
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": bool(share_buffer),
            "repetition_penalty": float(getattr(gen, "repetition_penalty", None) or 1.0),
            "temperature": float(getattr(gen, "temperature", None) or 1.0),
            "top_k": int(getattr(gen, "top_k", None) or 50),
            "top_p": float(getattr(gen, "top_p", None) or 1.0),
        },
    }


# Where onnxruntime-genai's builder departs from its own rule (builder.py's per-architecture branches):
# "gemma3" is its multimodal package type, which it refuses to load from a folder
_TYPES = {"Gemma3ForCausalLM": "gemma3_text"}


def genai_type(architecture: str) -> str:
    """``model.type`` as onnxruntime-genai's builder writes it: the architecture's name before "For", in lower
    case (LlamaForCausalLM -> llama), except where :data:`_TYPES` says otherwise."""
    return _TYPES.get(architecture, architecture.split("For")[0].lower())


def write_genai_config(folder: str | Path, dims: ModelDims, config, generation_config, *, context_length: int,
                       model_file: str = "model.onnx", share_buffer: bool = False) -> str | None:
    """Write ``genai_config.json`` into ``folder``; its file name, or None where none could be written.
    ``share_buffer``: the graph lets past and present be one buffer (:func:`.kv.declare_kv`)."""
    cfg = genai_config(dims, config, generation_config, context_length=context_length, model_file=model_file,
                       share_buffer=share_buffer)
    if cfg is None:
        return None
    (Path(folder) / GENAI_CONFIG).write_text(json.dumps(cfg, indent=4) + "\n")
    return GENAI_CONFIG


def _first(generation_config, config, field: str):
    for source in (generation_config, config):
        value = getattr(source, field, None) if source is not None else None
        if value is not None:
            return value
    return None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
