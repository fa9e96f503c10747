"""Model families: one row per decoder family, read by model loading, both exporters, the tests and README.

Everything that differs between Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma 3 is a field of a
:class:`Family`; everything about one particular model (widths, head counts, which layers slide) comes
from its config and tensors. Adding a family means adding a row here and a tiny test config in
tests/tiny.py; the GGUF tensor names come from gguf-py's own map (``gguf.get_tensor_name_map`` for
``gguf_arch``), not from a list restated here.

This module is torch-free and gguf-free on purpose: model loading reads it (a lower layer than the
exporters), and :func:`check_model_files` must answer from config.json and the tokenizer files alone,
before any weight is read.

    >>> fam = family_for({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    >>> fam.gguf_arch, fam.rope_permute, fam.attn_bias
    ('qwen2', False, 'qkv')
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .errors import IncompatibleLayerError, ModelLoadError
from .jsonfile import read_json

# norm role -> Hugging Face module suffix inside a decoder layer (None: the family has no such norm)
LLAMA_NORMS = (("input", "input_layernorm"), ("post_attn", None), ("pre_mlp", "post_attention_layernorm"),
               ("post_mlp", None))
GEMMA_NORMS = (("input", "input_layernorm"), ("post_attn", "post_attention_layernorm"),
               ("pre_mlp", "pre_feedforward_layernorm"), ("post_mlp", "post_feedforward_layernorm"))
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


@dataclasses.dataclass(frozen=True)
class Family:
    """What a decoder family is, as the exporters and stages need to know it. Field by field:

    - ``gguf_arch``: llama.cpp's architecture name (gguf-py's ``MODEL_ARCH``, lower case).
    - ``rope_permute``: llama.cpp's graph for ``gguf_arch`` rotates adjacent pairs (GPT-J style) where
      Hugging Face rotates halves, so q/k rows are reordered per head in the GGUF (llama.cpp's converter
      does the same permutation); NEOX-style archs (qwen2, qwen3, phi3, gemma3) take the rows as they are.
    - ``rope_types``: rope scaling types (``rope_type`` in config.json) both exporters carry.
    - ``partial_rotary``: a ``partial_rotary_factor`` below 1 (only the first dims of each head rotate,
      Phi-4-mini) is carried; elsewhere it is refused (the family's PyTorch code rotates whole heads).
    - ``norm_offset``: RMSNorm multiplies by ``offset + w`` (Gemma: 1).
    - ``qkv`` / ``gate_up``: the modules holding q, k, v (and gate, up) in order; one fused module
      (Phi-3's ``qkv_proj``, ``gate_up_proj``) is carried fused, as llama.cpp's phi3 graph and
      onnxruntime's packed GroupQueryAttention want it.
    - ``attn_bias``: "none", "qkv" (Qwen2: q/k/v biases expected) or "optional" (carried if present).
    - ``window``: "none", "all" (``sliding_window`` on every layer) or "layer_types" (Gemma 3).
    - ``tokenizers``: tokenizer kinds accepted, "bpe" (byte-level BPE) and "spm" (SentencePiece-style).
    - ``gguf_keys``: groups of GGUF hyper-parameters written besides the common ones (see
      export.gguf.hparams); ``gguf_q_is_square``: llama.cpp's graph takes q as hidden x hidden; ``awq``:
      which AWQ folds apply; ``prune_width``: None or why not.
    - ``gguf_input``: None where a ``.gguf`` of ``gguf_arch`` is a valid input (the first row with that
      ``gguf_arch`` reads it: llama.cpp stores Mistral as ``llama``), else why not (refused from the header).
    """

    name: str
    hf_architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    gguf_arch: str
    rope_permute: bool
    rope_types: tuple[str, ...] = ("default", "linear")
    partial_rotary: bool = False
    norm_offset: float = 0.0
    embed_scale: bool = False
    qk_norm: bool = False
    attn_bias: str = "optional"
    qkv: tuple[str, ...] = QKV
    gate_up: tuple[str, ...] = GATE_UP
    activation_key: str = "hidden_act"
    activations: tuple[tuple[str, str], ...] = (("silu", "silu"),)  # HF name -> our op
    norm_modules: tuple[tuple[str, str | None], ...] = LLAMA_NORMS
    window: str = "none"
    attn_scale_key: str | None = None  # config key whose -0.5 power scales scores (default head_dim)
    tied_default: bool = False
    tokenizers: tuple[str, ...] = ("bpe", "spm")
    gguf_keys: tuple[str, ...] = ("rope",)
    # llama.cpp's graph for gguf_arch takes q as hidden x hidden (qwen2): fewer query heads cannot be exported
    gguf_q_is_square: bool = False
    # config.json settings that must be off, and why (refused before the weights load)
    refused_settings: tuple[tuple[str, str], ...] = ()
    awq: str = "all folds: norm -> q/k/v and gate/up, v -> o, up -> down"
    prune_width: str | None = None
    # None: a .gguf of gguf_arch is an input (transformers dequantizes it, compress.gguf_import completes its
    # config from the metadata and checks it against llama.cpp); else why not, refused from the header alone
    gguf_input: str | None = None
    notes: str = ""

    @property
    def norms(self) -> dict[str, str | None]:
        """norm role (input, post_attn, pre_mlp, post_mlp) -> module suffix, None where absent."""
        return dict(self.norm_modules)

    @property
    def linears(self) -> tuple[str, ...]:
        """Every linear of a decoder layer, by module suffix, in graph order."""
        return (*self.qkv, "self_attn.o_proj", *self.gate_up, "mlp.down_proj")

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1

    @property
    def fused_gate_up(self) -> bool:
        return len(self.gate_up) == 1

    def activation(self, config: dict[str, Any]) -> str:
        """Our op for the config's activation; IncompatibleLayerError names what the family allows."""
        acts = dict(self.activations)
        default = self.activations[0][0]
        act = config.get(self.activation_key) or config.get("hidden_act") or default
        if act not in acts:
            raise IncompatibleLayerError(f"config.{self.activation_key}: {act!r} is not supported for {self.name} "
                                         f"(supported: {', '.join(acts)})")
        return acts[act]


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM",), ("llama",), "llama", rope_permute=True,
           rope_types=("default", "linear", "llama3"),
           notes="Llama 2/3/3.2, SmolLM2; llama3 rope scaling becomes llama.cpp's rope_freqs tensor"),
    Family("mistral", ("MistralForCausalLM",), ("mistral",), "llama", rope_permute=True, window="all",
           notes="llama.cpp runs mistral as llama and does not apply sliding_window (same within the window)"),
    Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "qwen2", rope_permute=False, attn_bias="qkv",
           gguf_q_is_square=True, refused_settings=(
               ("use_sliding_window", "llama.cpp's qwen2 graph has no sliding window (Qwen2.5 ships it false)"),),
           notes="Qwen2/2.5; use_sliding_window is refused; GGUF refuses fewer query heads (llama.cpp's qwen2 "
                 "graph takes q as hidden x hidden): prune MLP channels and KV heads only, or export ONNX"),
    Family("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), "qwen3", rope_permute=False, qk_norm=True, attn_bias="none",
           gguf_keys=("rope", "head_dims"), notes="head_dim is not hidden/heads"),
    Family("phi3", ("Phi3ForCausalLM",), ("phi3",), "phi3", rope_permute=False,
           # transformers' Phi3Config takes only these ("su" is longrope's old name, renamed on load)
           rope_types=("default", "longrope", "su"), partial_rotary=True,
           qkv=("self_attn.qkv_proj",), gate_up=("mlp.gate_up_proj",), window="all", attn_bias="none",
           gguf_keys=("rope", "phi3"),
           awq="norm folds only: v and up are rows of the fused qkv_proj / gate_up_proj",
           prune_width="fused qkv_proj / gate_up_proj: width pruning needs separate q/k/v and gate/up",
           notes="Phi-3/3.5/4-mini; longrope (128k) and partial rotary carried. ONNX switches short/long factors by "
                 "the sequence's length, as PyTorch (a KV cache crossing original_max_position_embeddings keeps its "
                 "earlier keys' short rotation, as transformers' cache does) and needs rotary dims in multiples of "
                 "16; llama.cpp switches by n_ctx: a GGUF matches PyTorch with n_ctx <= "
                 "original_max_position_embeddings (4096), beyond it only on longer sequences; llama.cpp disables "
                 "phi3's sliding window (same within the window)"),
    Family("gemma3", ("Gemma3ForCausalLM",), ("gemma3_text",), "gemma3", rope_permute=False, norm_offset=1.0,
           embed_scale=True, qk_norm=True, attn_bias="none", activation_key="hidden_activation",
           activations=(("gelu_pytorch_tanh", "gelu_tanh"),), norm_modules=GEMMA_NORMS, window="layer_types",
           attn_scale_key="query_pre_attn_scalar", tied_default=True, gguf_keys=("gemma3",),
           notes="text-only Gemma 3 (270m/1b); every window starts with <bos>"),
)
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}


def supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.hf_architectures)})" for f in FAMILIES)


def family_for(config: dict[str, Any], where: str | Path = "config.json") -> Family:
    """The row for a config.json (its ``architectures``, else its ``model_type``); IncompatibleLayerError
    lists the supported families otherwise."""
    archs = tuple(config.get("architectures") or ())
    mtype = config.get("model_type")
    for f in FAMILIES:
        if any(a in f.hf_architectures for a in archs) or (not archs and mtype in f.model_types):
            if mtype is not None and mtype not in f.model_types:
                break
            return f
    raise IncompatibleLayerError(
        f"{where}: architecture {'/'.join(archs) or '?'} (model_type {mtype!r}) is not a family compress "
        f"supports; supported: {supported()}")


def gguf_input_family(gguf_arch: str | None, where: str | Path) -> Family:
    """The row that reads a ``.gguf`` of llama.cpp architecture ``gguf_arch`` (its ``general.architecture``);
    IncompatibleLayerError, from the header alone, for an architecture no row has or a row whose
    ``gguf_input`` says why its files cannot be read, with what to give instead."""
    fam = next((f for f in FAMILIES if f.gguf_arch == gguf_arch), None)
    readable = ", ".join(dict.fromkeys(f.gguf_arch for f in FAMILIES if f.gguf_input is None))
    if fam is None:
        raise IncompatibleLayerError(f"{where}: GGUF architecture {gguf_arch!r} is not a family compress supports; "
                                     f".gguf inputs compress reads: {readable}")
    if fam.gguf_input is not None:
        raise IncompatibleLayerError(f"{where}: a {gguf_arch} GGUF cannot be read as an input ({fam.gguf_input}); "
                                     f"give the Hugging Face folder it was converted from instead")
    return fam


def gguf_family(path: Path, reader: Any = None) -> Family:
    """:func:`gguf_input_family` of a ``.gguf`` file's ``general.architecture``, read from its header (no
    tensor data). gguf-py is imported here, not at the top: this module stays light for config checks."""
    if reader is None:
        from gguf import GGUFReader

        reader = GGUFReader(path)
    return gguf_input_family(gguf_field(reader, "general.architecture"), path)


def gguf_field(reader: Any, key: str) -> Any:
    """A GGUF metadata value (strings decoded), None when the file has no such key."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value.decode("utf-8") if isinstance(value, bytes) else value


def family_of_model_type(model_type: str | None) -> Family | None:
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of full-attention layers: transformers 5's ``rope_parameters`` (possibly per layer
    type) or 4.x's ``rope_scaling`` + ``rope_theta``."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    if not params:
        params = dict(config.get("rope_scaling") or {})
        if "rope_theta" in config:
            params.setdefault("rope_theta", config["rope_theta"])
    return dict(params)


def rope_type(params: dict[str, Any]) -> str:
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def rotary_dim(config: dict[str, Any], head_dim: int | None = None) -> int:
    """Dims of each head that rotate: ``int(head_dim * partial_rotary_factor)``, as transformers computes it
    (Phi-4-mini: 128 * 0.75 = 96; the rest of the head passes through unrotated). ``head_dim``: the one the
    tensors have, where known (default: config.json's)."""
    head_dim = head_dim or config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"])
    prf = config.get("partial_rotary_factor", rope_parameters(config).get("partial_rotary_factor"))
    return int(int(head_dim) * float(1.0 if prf is None else prf))


@dataclasses.dataclass(frozen=True)
class LongRope:
    """Phi-3's longrope (128k context): each rotary frequency is divided by ``short_factor`` while the
    sequence fits in ``original_context`` positions and by ``long_factor`` beyond it (transformers decides
    per forward pass, on the largest position), and cos/sin are scaled by ``attention_factor`` either way."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_context: int
    attention_factor: float


def longrope(config: dict[str, Any], where: str | Path = "config.json") -> LongRope | None:
    """The longrope settings of a config.json, computed as transformers 5 does (``attention_factor`` if
    given, else sqrt(1 + ln(factor) / ln(original)) with ``factor`` defaulting to max_position_embeddings /
    original_max_position_embeddings); None for any other rope type. IncompatibleLayerError names a factor
    list of the wrong length or a missing original context."""
    params = rope_parameters(config)
    if rope_type(params) not in ("longrope", "su"):
        return None
    # Phi-3 keeps the pretraining context at the top level, and transformers gives that one priority
    original = config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    if not original:
        raise IncompatibleLayerError(f"{where}: longrope needs original_max_position_embeddings (the context the "
                                     "short factors apply to)")
    original = int(original)
    half = rotary_dim(config) // 2
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = params.get(key)
        if not isinstance(values, (list, tuple)) or len(values) != half:
            n = len(values) if isinstance(values, (list, tuple)) else values
            raise IncompatibleLayerError(f"{where}: rope {key} has {n!r} values; longrope needs one per rotary "
                                         f"frequency ({half} = rotary dims {rotary_dim(config)} / 2)")
        factors[key] = tuple(float(v) for v in values)
    attention = params.get("attention_factor")
    if attention is None:
        factor = params.get("factor") or int(config.get("max_position_embeddings", original)) / original
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return LongRope(factors["short_factor"], factors["long_factor"], original, float(attention))


def check_config(fam: Family, config: dict[str, Any], where: str | Path) -> None:
    """Refuse settings of a known family that the exporters cannot carry, from config.json alone."""
    kind = rope_type(rope_parameters(config))
    if kind not in fam.rope_types:
        raise IncompatibleLayerError(f"{where}: rope_type {kind!r} is not supported for {fam.name} "
                                     f"(supported: {', '.join(fam.rope_types)})")
    fam.activation(config)
    for key, why in fam.refused_settings:
        if config.get(key):
            raise IncompatibleLayerError(f"{where}: {key} is {config[key]!r}, not supported for {fam.name}: {why}")
    prf = config.get("partial_rotary_factor", rope_parameters(config).get("partial_rotary_factor"))
    if prf is not None and float(prf) != 1.0:
        if not fam.partial_rotary:
            raise IncompatibleLayerError(f"{where}: partial_rotary_factor {prf} is not supported for {fam.name} "
                                         "(supported: 1.0, rotary over the whole head)")
        dims = rotary_dim(config)
        if dims <= 0 or dims % 2:
            raise IncompatibleLayerError(f"{where}: partial_rotary_factor {prf} leaves {dims} rotary dims per head; "
                                         "rotary needs an even number above 0")
    longrope(config, where)


def tokenizer_kind(folder: Path) -> tuple[str | None, str]:
    """("bpe" | "spm" | None, description) from the tokenizer files alone; None when there are none."""
    tj_path = folder / "tokenizer.json"
    if tj_path.is_file():
        tj = read_json(tj_path, IncompatibleLayerError, problem="corrupt tokenizer")
        model = tj.get("model") if isinstance(tj, dict) else None
        if not isinstance(model, dict):
            raise IncompatibleLayerError(f"{tj_path}: corrupt tokenizer (no 'model' object)")
        mtype = model.get("type")
        if mtype == "BPE":
            text = json.dumps([tj.get("pre_tokenizer"), tj.get("decoder")])
            if '"ByteLevel"' in text:
                return "bpe", "byte-level BPE"
            if model.get("byte_fallback") or '"Metaspace"' in text or "\u2581" in json.dumps(tj.get("normalizer")):
                return "spm", "SentencePiece-style BPE (byte fallback)"
            return "other", "BPE that is neither byte-level nor SentencePiece-style"
        return "other", f"a {mtype} tokenizer model"
    if (folder / "tokenizer.model").is_file():
        return "spm", "SentencePiece (tokenizer.model)"
    return None, "no tokenizer files"


def check_model_files(folder: Path, config: dict[str, Any] | None = None) -> Family:
    """Family, rope type and tokenizer kind of a Hugging Face folder, refused with what is supported, from
    config.json and the tokenizer files alone (no weight file is opened)."""
    where = folder / "config.json"
    if config is None:
        config = read_json(where, ModelLoadError)
    fam = family_for(config, where)
    check_config(fam, config, where)
    kind, desc = tokenizer_kind(folder)
    if kind is not None and kind not in fam.tokenizers:
        raise IncompatibleLayerError(f"{folder}: tokenizer is {desc}; supported for {fam.name}: "
                                     + ", ".join(TOKENIZER_NAMES[k] for k in fam.tokenizers))
    return fam


def check_prune_method(fam: Family, method: str, where: str | Path) -> None:
    """Refuse a pruning method the family row rules out (width on fused projections), from config.json
    alone, naming why and what the family does take."""
    if method == "width" and fam.prune_width is not None:
        raise IncompatibleLayerError(f"{where}: width pruning is not supported for {fam.name} ({fam.prune_width}); "
                                     f"{fam.name} takes depth, wanda and 2:4")


TOKENIZER_NAMES = {"bpe": "byte-level BPE (tokenizer.json)",
                   "spm": "SentencePiece (tokenizer.model, or tokenizer.json BPE with byte fallback)"}
