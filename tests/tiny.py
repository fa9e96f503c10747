"""Tiny models and tokenizers built in-process (seconds, no network), for every test tier.

Widths are deliberately not multiples of 64 (hidden 96) and KV heads are grouped, like the real
models' awkward shapes (SmolLM2's 576 is not a multiple of 128).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
_SPECIALS = ["<unk>", "<s>", "</s>"]


def build_tokenizer(add_bos: bool):
    """A byte-level BPE trained on a slice of the bundled text; BOS first by default if ``add_bos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from compress.data import load_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([load_text("moby-dick-calib").text[:200_000]], trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)
    kw.update(overrides)
    return LlamaConfig(**kw)


def gemma3_config(**overrides):
    from transformers import Gemma3TextConfig

    kw = dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=24, max_position_embeddings=1024, sliding_window=32,
              layer_types=["sliding_attention", "full_attention"], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    return Gemma3TextConfig(**kw)


def build_model(arch: str = "llama", seed: int = 0, **overrides):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(llama_config(**overrides))
    elif arch == "gemma3":
        model = Gemma3ForCausalLM(gemma3_config(**overrides))
    else:
        raise ValueError(arch)
    return model.eval()


def save_tiny(path: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny model + tokenizer as a Hugging Face folder (safetensors)."""
    model = build_model(arch, seed, **overrides)
    model.save_pretrained(path)
    build_tokenizer(add_bos=(arch == "gemma3")).save_pretrained(path)
    return path


def save_perturbed(path: Path, rel_noise: float, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """The tiny model of ``save_tiny`` with Gaussian noise of ``rel_noise`` x each matrix's std added to
    every non-embedding matrix: a tests-only degraded model for regression gates."""
    model = build_model(arch, seed, **overrides)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * rel_noise)
    model.save_pretrained(path)
    build_tokenizer(add_bos=(arch == "gemma3")).save_pretrained(path)
    return path
