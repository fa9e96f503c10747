"""Tiny models and tokenizers built in-process (seconds, no network): every test tier and the CI gate's
tiny pipeline (benchmarks/gate.py) build on them.

Widths are deliberately not multiples of 64 (hidden 96) and KV heads are grouped, like the real
models' awkward shapes (SmolLM2's 576 is not a multiple of 128).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
_SPECIALS = ["<unk>", "<s>", "</s>"]


SPM_VOCAB = 512  # SentencePiece-style vocabularies carry 256 byte-fallback pieces besides the merges
# A little non-English text and code in the training text, so that the vocabularies have multi-byte and
# digit/whitespace tokens for the tokenizer checks to disagree on
_EXTRA_TEXT = ("Größe café naïve — 東京は大きい。Москва большая. def f(x):\n    return x**2  # 12345\n\t\tif a == b: "
               "print('ok')\n") * 500
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")


def _training_text() -> str:
    from compress.data import load_text

    return load_text("moby-dick-calib").text[:200_000] + _EXTRA_TEXT


def build_tokenizer(add_bos: bool, extra_specials: tuple[str, ...] = (), kind: str = "gpt2", vocab: int = VOCAB):
    """A byte-level BPE trained on a slice of the bundled text; BOS first by default if ``add_bos``;
    ``extra_specials`` (chat markers such as Phi-3's ``<|end|>``) are special tokens within the VOCAB ids.
    ``kind`` picks the pre-tokenizer llama.cpp knows it by: "gpt2" (ByteLevel's own regex), "llama-bpe"
    (Llama 3's split regex), "qwen2" (the same with single digits); "spm" and "spm-gemma" build a
    SentencePiece-style vocabulary instead (see :func:`build_sentencepiece_tokenizer`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind.startswith("spm"):
        return build_sentencepiece_tokenizer(add_bos, extra_specials, prefix=(kind == "spm"))
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama-bpe")))
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        regex = LLAMA3_SPLIT if kind == "llama-bpe" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if kind == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=_SPECIALS + list(extra_specials),
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # "gpt2" keeps the original tiny tokenizer's exact training text: other tests and the CI gate's baseline
    # are built on it
    text = _training_text()[:200_000] if kind == "gpt2" else _training_text()
    tok.train_from_iterator([text], trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def build_sentencepiece_tokenizer(add_bos: bool, extra_specials: tuple[str, ...] = (), prefix: bool = True):
    """A SentencePiece-style BPE (as Llama 2, Mistral, Phi-3 and Gemma ship in tokenizer.json): pieces with
    "▁" for spaces, the 256 ``<0xNN>`` byte pieces as fallback, SPM_VOCAB ids in all. ``prefix``: a
    "▁" goes before the text (Llama 2, Mistral); Gemma's does not."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS + list(extra_specials)
    scheme = "first" if prefix else "never"
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    trainer = trainers.BpeTrainer(vocab_size=SPM_VOCAB - 256, special_tokens=specials, show_progress=False)
    trained.train_from_iterator([_training_text()], trainer)
    learned = trained.get_vocab()
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for t, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    import json

    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # split=False: merges then see the whole text, as SentencePiece (and llama.cpp) do
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    tok.add_special_tokens(specials)
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


# One tiny config per row of compress.families, with dimensions that exercise the family's quirks; head_dim
# is a multiple of 16 everywhere (onnxruntime's GroupQueryAttention needs it), hidden 96 is not one of 64.
# Vocabulary 512 for every family: room for the SentencePiece byte pieces, and for byte-level merges of
# digits and non-English text that tell pre-tokenizers apart.
_GQA = dict(vocab_size=SPM_VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2)
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    # llama3 rope scaling with an original context of 64, so that head_dim 16's eight frequencies fall in
    # all three bands (kept, smoothed, divided by the factor)
    "llama": ("LlamaConfig", dict(_GQA, rope_theta=10000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", dict(_GQA, head_dim=16, sliding_window=4096)),
    "qwen2": ("Qwen2Config", dict(_GQA, tie_word_embeddings=True)),  # q/k/v biases, tied embeddings
    "qwen3": ("Qwen3Config", dict(_GQA, num_attention_heads=4, head_dim=32, tie_word_embeddings=True)),  # 4x32 != 96
    "phi3": ("Phi3Config", dict(_GQA, sliding_window=2047, original_max_position_embeddings=1024)),  # fused qkv/gate_up
    "gemma3": ("Gemma3TextConfig", dict(_GQA, num_attention_heads=4, head_dim=32, sliding_window=32,
                                        layer_types=["sliding_attention", "full_attention"], pad_token_id=0)),
}
_MODEL_CLASSES = {"LlamaConfig": "LlamaForCausalLM", "MistralConfig": "MistralForCausalLM",
                  "Qwen2Config": "Qwen2ForCausalLM", "Qwen3Config": "Qwen3ForCausalLM", "Phi3Config": "Phi3ForCausalLM",
                  "Gemma3TextConfig": "Gemma3ForCausalLM"}


def family_model(family: str, seed: int = 0, **overrides):
    """The tiny model of a family row (see FAMILY_CONFIGS), random weights, eval mode."""
    import transformers

    cfg_name, kw = FAMILY_CONFIGS[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**kw, **overrides})
    model = getattr(transformers, _MODEL_CLASSES[cfg_name])(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms start at 1 (Gemma: 0) and biases at 0: make a dropped offset or bias show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


# Each family's chat markers (special tokens, as in the real vocabularies) and a chat template of its shape.
# llama.cpp also looks some up by text: it gives Phi-3 vocabularies (a model whose name says phi3) per-token
# attributes keyed by "<|endoftext|>", and refuses the file without it.
FAMILY_SPECIALS: dict[str, tuple[str, ...]] = {
    "llama": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": ("[INST]", "[/INST]"),
    "qwen2": ("<|im_start|>", "<|im_end|>"),
    "qwen3": ("<|im_start|>", "<|im_end|>"),
    "phi3": ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "gemma3": ("<start_of_turn>", "<end_of_turn>"),
}
_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
FAMILY_TEMPLATES: dict[str, str] = {
    "llama": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
              "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    "mistral": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"),
    "qwen2": _CHATML,
    "qwen3": _CHATML,
    "phi3": ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
    "gemma3": ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
               "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
               "<start_of_turn>model\n{% endif %}"),
}


# The tokenizer kind each family's real models ship: byte-level BPE with the family's pre-tokenizer, or a
# SentencePiece-style vocabulary (Gemma's without the leading "▁").
FAMILY_TOKENIZERS = {"llama": "llama-bpe", "mistral": "spm", "qwen2": "qwen2", "qwen3": "qwen2", "phi3": "spm",
                     "gemma3": "spm-gemma"}


def family_tokenizer(family: str):
    """The tokenizer the tiny model of ``family`` is saved with."""
    kind = FAMILY_TOKENIZERS[family]
    tok = build_tokenizer(add_bos=kind.startswith("spm"), extra_specials=FAMILY_SPECIALS.get(family, ()), kind=kind,
                          vocab=FAMILY_CONFIGS[family][1]["vocab_size"])
    tok.chat_template = FAMILY_TEMPLATES[family]
    return tok


def save_family(path: Path, family: str, seed: int = 0, **overrides) -> Path:
    """A tiny model of a family row and its tokenizer as a Hugging Face folder (random weights)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would land in the CLI tests' captured stderr
    family_model(family, seed, **overrides).save_pretrained(path)
    family_tokenizer(family).save_pretrained(path)
    return path


def build_model(arch: str = "llama", seed: int = 0, **overrides):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(llama_config(**overrides))
    elif arch == "gemma3":
        model = Gemma3ForCausalLM(gemma3_config(**overrides))
    elif arch in FAMILY_CONFIGS:
        return family_model(arch, seed, **overrides)
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
