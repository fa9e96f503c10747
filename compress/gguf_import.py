"""GGUF → transformers, proved against llama.cpp.

transformers can dequantize a GGUF into a dense fp32 model, but it can also build it wrongly with
identical weights: 4.57 gives Gemma3 the wrong rope settings (perplexity 140 instead of 16), and a
folder saved by 5.x and read by 4.57 silently loses SmolLM2's rope_theta (+11% perplexity). Only an
independent runtime catches that, so every import is scored on the same token ids by the imported
model and by llama.cpp running the same GGUF, and refused when they disagree. The llama.cpp figure is
stored in the fetch manifest, so every later reload of the saved folder is checked against it too.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import CHECK_TOKENS, check_ids
from . import logits
from .errors import ImportMismatchError, ModelLoadError, optional_import
from .logits import token_nll

log = logging.getLogger(__name__)

# llama.cpp multiplies Q4/Q8 blocks with 8-bit activations while transformers uses the dequantized
# fp32 weights: on the bundled models that costs <1% perplexity. Broken rope settings cost 11% to 800%.
DEFAULT_TOLERANCE = 0.03
# ... and top-1 agreement: the bundled models agree on 97-98% of next tokens, while a tiny Gemma3 built with a
# wrong attention setting agreed on 41% and still passed the perplexity check (near-flat distributions keep a
# broken model's perplexity close to the right one's)
MIN_TOP1 = 0.80


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Dequantize a GGUF into a transformers model (fp32, eval mode) and its tokenizer. The family is
    checked from the file's metadata first (:func:`compress.families.gguf_family`), and the config that
    transformers builds is completed from it (:func:`gguf_config`), before any weight is read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = gguf_config(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=config,
                                                     dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError, OSError, AssertionError) as e:
        raise ModelLoadError(f"{path}: transformers cannot build a model from this GGUF ({e})") from None
    strip_gguf_marker(model)
    restore_llama3_rope(model, path)
    model.eval()
    return model, tok




def gguf_config(path: Path) -> Any:
    """transformers' config for a GGUF with what its GGUF reader (5.23) leaves out restored from the file's
    metadata, then refused as a folder's config.json would be (:func:`compress.families.check_config`).
    Without this a Qwen3 whose head_dim is not hidden/heads fails on tensor shapes, a tiny-vocabulary Phi-3
    on its default pad id 32000, Phi-3.5's longrope and Phi-4-mini's partial rotary are silently dropped
    (the import check would then refuse it), and a llama GGUF named "mistral" gets a class with no tensor map."""
    from gguf import GGUFReader
    from transformers import AutoConfig, LlamaConfig

    from .families import check_config, gguf_family, gguf_field

    reader = GGUFReader(path)
    fam = gguf_family(path, reader)
    arch = fam.gguf_arch
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"{path}: transformers cannot read this GGUF's metadata ({e})") from None
    d = config.to_dict()
    cls = type(config)
    if arch == "llama" and d.get("model_type") != "llama":
        # transformers turns a llama GGUF whose general.name is exactly "mistral" into its Mistral class, then
        # finds no tensor map for it; llama.cpp runs it as llama, and so do we
        cls, d["model_type"] = LlamaConfig, "llama"
        d.pop("sliding_window", None)
    heads, hidden = int(d["num_attention_heads"]), int(d["hidden_size"])
    head_dim = gguf_field(reader, f"{arch}.attention.key_length")
    if head_dim is not None and "head_dim" in d:
        d["head_dim"] = int(head_dim)
    head_dim = int(d.get("head_dim") or hidden // heads)
    if fam.attn_scale_key:
        # llama.cpp scales gemma3's scores by head_dim**-0.5 ((hidden/heads)**-0.5 at 62 layers, the 27B), and
        # our exporter folds any other query_pre_attn_scalar into q_norm: the file means this one
        d[fam.attn_scale_key] = hidden // heads if int(d["num_hidden_layers"]) == 62 else head_dim
    rope = dict(d.get("rope_parameters") or {})
    rotary = gguf_field(reader, f"{arch}.rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        d["partial_rotary_factor"] = rope["partial_rotary_factor"] = int(rotary) / head_dim
    factors = {t.name: t for t in reader.tensors if t.name in ("rope_factors_long.weight", "rope_factors_short.weight")}
    original = gguf_field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None and "original_max_position_embeddings" in d:
        d["original_max_position_embeddings"] = int(original)
    if factors:
        rope.update(rope_type="longrope",
                    long_factor=[float(x) for x in np.asarray(factors["rope_factors_long.weight"].data).reshape(-1)],
                    short_factor=[float(x) for x in np.asarray(factors["rope_factors_short.weight"].data).reshape(-1)])
        attn = gguf_field(reader, f"{arch}.rope.scaling.attn_factor")
        if attn is not None:
            rope["attention_factor"] = float(attn)
    if isinstance(rope.get("sliding_attention"), dict):  # per layer type (Gemma 3): freq_base_swa is ignored
        for key, kind in ((f"{arch}.rope.freq_base", "full_attention"),
                          (f"{arch}.rope.freq_base_swa", "sliding_attention")):
            theta = gguf_field(reader, key)
            if theta is not None:
                rope[kind] = {**rope[kind], "rope_theta": float(theta)}
    if rope:
        d["rope_parameters"] = rope
    window = gguf_field(reader, f"{arch}.attention.sliding_window")
    if "sliding_window" in d and window:
        d["sliding_window"] = int(window)
    pattern = gguf_field(reader, f"{arch}.attention.sliding_window_pattern")
    if pattern is not None and "layer_types" in d:
        # ignored too: transformers' default (5 sliding, 1 full) is right for the real Gemma 3 only. llama.cpp's
        # rule: a bool per layer, or a period p with layer i sliding iff i % p < p - 1 (0: every layer)
        n, p = int(d["num_hidden_layers"]), pattern
        sliding = ([bool(x) for x in p] if isinstance(p, list) else
                   [int(p) == 0 or i % int(p) < int(p) - 1 for i in range(n)])
        d["layer_types"] = ["sliding_attention" if x else "full_attention" for x in sliding]
    pad, vocab = d.get("pad_token_id"), int(d["vocab_size"])
    if pad is not None and not 0 <= int(pad) < vocab:  # a class default (Phi-3's 32000) past this vocabulary
        pad = gguf_field(reader, "tokenizer.ggml.padding_token_id")
        d["pad_token_id"] = int(pad) if pad is not None and 0 <= int(pad) < vocab else None
    check_config(fam, d, path)
    d.pop("model_type", None)
    d.pop("transformers_version", None)
    try:
        return cls(**d)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: the config read from this GGUF's metadata is not valid for transformers "
                             f"({e})") from None


def restore_llama3_rope(model, path: Path) -> None:
    """Llama 3's rope scaling lives in a GGUF as the ``rope_freqs`` tensor (what llama.cpp divides each
    frequency by), not as settings, and transformers' GGUF reader ignores it: the model would be built with
    plain rope (the import check catches that: perplexity 9.2 vs 1.0 on a tiny Llama 3). Recover the llama3
    settings from the tensor and rebuild the rotary embedding; refuse when they do not reproduce it."""
    from gguf import GGUFReader

    freqs = next((t for t in GGUFReader(path).tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None or getattr(model.config, "model_type", None) != "llama":
        return
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ratio = np.asarray(freqs.data, dtype=np.float64).reshape(-1)
    cfg = model.config
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    theta = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    d = 2 * len(ratio)
    wavelen = 2 * math.pi * theta ** (np.arange(0, d, 2) / d)
    factor = float(ratio.max())
    smooth = (ratio > 1 + 1e-4) & (ratio < factor * (1 - 1e-4))
    where = f"{path}: rope_freqs"
    if factor <= 1 or smooth.sum() < 2:
        raise ModelLoadError(f"{where} is not llama3 rope scaling with a smoothed band (factor {factor:g}, "
                             f"{int(smooth.sum())} smoothed frequencies); cannot rebuild it in transformers")
    # llama3: 1/ratio = (1-s)/factor + s, s = (old_ctx/wavelen - low)/(high - low), linear in 1/wavelen. Only
    # old_ctx/low and old_ctx/high are determined (the band edges), so low = 1 reproduces the same frequencies.
    s = (1 / ratio[smooth] - 1 / factor) / (1 - 1 / factor)
    a, b = np.polyfit(1 / wavelen[smooth], s, 1)
    high = 1 - 1 / b
    new = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": 1.0,
           "high_freq_factor": float(round(high, 6)), "original_max_position_embeddings": int(round(-a / b))}
    cfg.rope_parameters = new
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, None)
    got = (1 / (theta ** (np.arange(0, d, 2) / d))) / inv_freq.double().numpy()
    if not np.allclose(got, ratio, rtol=1e-4):
        raise ModelLoadError(f"{where}: llama3 settings {new} do not reproduce the file's frequencies "
                             f"(largest difference {np.abs(got - ratio).max():.3g}); cannot rebuild it in transformers")
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=cfg)
    log.info("%s: llama3 rope scaling rebuilt from rope_freqs: %s", path, new)


def strip_gguf_marker(model) -> None:
    """The weights are plain fp32 after import; without the GGUF quantizer marker transformers
    will save them (otherwise: 'quantized with gguf and is not serializable')."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@torch.inference_mode()
def torch_logits(model, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids])).logits[0].float().numpy()


def llamacpp_logits(gguf: Path, ids: list[int], threads: int = 2) -> np.ndarray:
    Llama = optional_import("llama_cpp", "the import check needs llama.cpp", "llama-cpp-python").Llama
    llm = Llama(model_path=str(gguf), n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids)), logits_all=True,
                n_threads=threads, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def compare(model, tokenizer, gguf: Path, *, n_tokens: int = CHECK_TOKENS,
            tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Score the check text with the imported model and llama.cpp; raise when they disagree."""
    ids = check_ids(tokenizer, n_tokens)
    t_logits = torch_logits(model, ids)
    l_logits = llamacpp_logits(gguf, ids)
    ppl_t = float(math.exp(token_nll(t_logits, ids).mean()))
    ppl_l = float(math.exp(token_nll(l_logits, ids).mean()))
    c = logits.compare(t_logits[:-1], l_logits[:-1])
    report = {"check_ids": ids, "llamacpp_perplexity": ppl_l, "torch_perplexity": ppl_t,
              "top1_agreement": c.top1_agreement, "kl_mean": c.kl_mean, "tolerance": tolerance}
    verify_against(report, ppl_t, where=str(gguf))
    if c.top1_agreement < MIN_TOP1:
        import transformers

        raise ImportMismatchError(
            f"{gguf}: transformers {transformers.__version__} and llama.cpp agree on the next token at only "
            f"{c.top1_agreement:.1%} of {c.positions} positions (at least {MIN_TOP1:.0%} expected; KL "
            f"{c.kl_mean:.3g}); the model was built wrongly from this file's metadata")
    return report


def verify_against(report: dict[str, Any], torch_ppl: float, *, where: str) -> None:
    """Refuse when ``torch_ppl`` is off the stored llama.cpp perplexity by more than the tolerance."""
    ref, tol = report["llamacpp_perplexity"], report["tolerance"]
    ratio = torch_ppl / ref
    if not (1 / (1 + tol) <= ratio <= 1 + tol):
        import transformers

        raise ImportMismatchError(
            f"{where}: transformers {transformers.__version__} and llama.cpp disagree on the same "
            f"{len(report['check_ids'])} tokens: perplexity {torch_ppl:.3f} vs {ref:.3f} (ratio {ratio:.3f}, "
            f"tolerance ±{tol:.0%}); the model was built wrongly (rope settings?) - use transformers>=5.23"
        )
    log.info("import check %s: perplexity %.3f vs llama.cpp %.3f", where, torch_ppl, ref)
