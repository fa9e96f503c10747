"""Which form each weight takes in the ONNX file, decided before any graph is built.

    plan = make_plan(src, dims, OnnxConfig(precision="int4"))
    plan.linears["model.layers.0.mlp.down_proj"].kind    # "nbits" (the artifact's integers) or "ort-nbits"
    plan.head.kind, plan.embeddings.kind                  # "nbits" / "gbq" / "float32" / "float16"

Rules: integers a quantized artifact holds are carried as they are (never re-quantized; an int4 artifact
refuses the int8 precision rather than re-rounding it); layers the artifact deliberately kept in float
stay float; a float artifact is quantized by onnxruntime's own tools after the graph is built
("ort-nbits": MatMulNBitsQuantizer at 4 or 8 bits; "dynamic": quantize_dynamic). lm_head and the embedding table follow ``OnnxConfig.lm_head``
/ ``embeddings``; a tied pair quantized to the same integers is stored once.
"""

from __future__ import annotations

import dataclasses
import logging

from compress.errors import ConfigError

from .arch import ModelDims
from .config import OnnxConfig
from .graph import nbits_block
from .weights import QWeight, WeightSource, rtn

log = logging.getLogger(__name__)

EMBED = "model.embed_tokens"
HEAD = "lm_head"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


@dataclasses.dataclass
class Choice:
    kind: str  # linears: float | nbits | ort-nbits | dynamic; head: float | nbits; embeddings: float32 | float16 | gbq
    qw: QWeight | None = None
    block: int | None = None
    note: str = ""


@dataclasses.dataclass
class Plan:
    linears: dict[str, Choice]
    head: Choice
    embeddings: Choice
    shared: bool  # tied embeddings and lm_head stored once (same integers)
    float_type: str  # "float32" | "float16": storage of float weights
    post: str | None  # "ort-nbits" | "dynamic" | None: onnxruntime tool run over the built graph
    integers: str  # "artifact" | "artifact+head" | "onnxruntime" | "none": where the integers came from

    def summary(self) -> dict[str, object]:
        kinds: dict[str, int] = {}
        for c in self.linears.values():
            key = f"nbits-int{c.qw.bits}" if c.kind == "nbits" else c.kind
            kinds[key] = kinds.get(key, 0) + 1
        head = f"int{self.head.qw.bits} ({self.head.qw.origin})" if self.head.kind == "nbits" else self.float_type
        emb = (f"int{self.embeddings.qw.bits} ({self.embeddings.qw.origin})" if self.embeddings.kind == "gbq"
               else self.embeddings.kind)
        notes = sorted({c.note for c in self.linears.values() if c.note})
        return {"linears": kinds, "lm_head": head, "embeddings": emb, "shared_embeddings": self.shared,
                "post_quantizer": self.post, "integers": self.integers, "notes": notes}


def make_plan(src: WeightSource, dims: ModelDims, cfg: OnnxConfig) -> Plan:
    float_type = "float16" if cfg.precision == "fp16" else "float32"
    quantized = src.quant_info is not None
    linears: dict[str, Choice] = {}
    post = None
    for i in range(len(dims.layers)):
        for suffix in LINEARS:
            name = f"model.layers.{i}.{suffix}"
            linears[name] = _linear_choice(src, name, cfg, quantized)
    if any(c.kind == "ort-nbits" for c in linears.values()):
        post = "ort-nbits"
    elif any(c.kind == "dynamic" for c in linears.values()):
        post = "dynamic"
    head = _head_choice(src, dims, cfg)
    emb, shared = _embedding_choice(src, dims, cfg, head, float_type)
    if post is not None:
        integers = "onnxruntime"
    elif not any(c.qw is not None for c in [head, emb, *linears.values()]):
        integers = "none"
    elif all(c.qw is None or c.qw.origin == "artifact" for c in [head, emb]):
        integers = "artifact"
    else:
        integers = "artifact+head"
    return Plan(linears, head, emb, shared, float_type, post, integers)


def _linear_choice(src: WeightSource, name: str, cfg: OnnxConfig, quantized: bool) -> Choice:
    qw = src.quantized(name)
    if cfg.precision in ("fp32", "fp16"):
        return Choice("float")
    if qw is not None:
        if cfg.precision == "int8" and qw.bits != 8:
            raise ConfigError(f"export-onnx.precision: int8, but the artifact holds int{qw.bits} integers for {name}; "
                              "export it with --precision int4 (its own integers) or fp32 (dequantized)")
        block = nbits_block(qw.group_size, qw.shape[1])
        if block is None:
            log.warning("%s: group size %d has no power-of-two MatMulNBits block; kept in float", name, qw.group_size)
            return Choice("float", note=f"group {qw.group_size} not MatMulNBits-compatible: float")
        return Choice("nbits", qw, block)
    if quantized:
        return Choice("float", note="kept in float by the artifact")
    return Choice("dynamic" if cfg.precision == "int8" and cfg.int8_method == "dynamic" else "ort-nbits")


def _head_choice(src: WeightSource, dims: ModelDims, cfg: OnnxConfig) -> Choice:
    qw = src.quantized(HEAD) or (src.quantized(EMBED) if dims.tied else None)
    want = cfg.lm_head
    if want == "auto":
        if cfg.precision in ("fp32", "fp16"):
            return Choice("float")
        # 8-bit MatMulNBits with float activations (accuracy_level 0) is onnxruntime's slow path on CPU
        # (a 49152x576 lm_head: ~500 ms per token); float32 is the faster exact choice there
        default = "float" if cfg.accuracy_level == 0 else "int8"
        want = f"int{qw.bits}" if qw is not None else default
    if want == "float":
        return Choice("float")
    bits = int(want[3:])
    if qw is not None:
        if qw.bits != bits:
            raise ConfigError(f"export-onnx.lm_head: {want}, but the artifact already holds int{qw.bits} integers for "
                              f"it; use --lm-head auto (its own) or float (dequantized)")
        block = nbits_block(qw.group_size, qw.shape[1])
        if block is not None:
            return Choice("nbits", qw, block)
        log.warning("lm_head: group size %d has no MatMulNBits block; re-quantized with block %d", qw.group_size,
                    cfg.block_size)
    w = src.float(f"{HEAD}.weight") if src.has(f"{HEAD}.weight") else src.float(f"{EMBED}.weight")
    _check_width("lm_head", w.shape[1], cfg.block_size)
    return Choice("nbits", rtn(HEAD, w, bits, cfg.block_size), cfg.block_size)


def _embedding_choice(src: WeightSource, dims: ModelDims, cfg: OnnxConfig, head: Choice,
                      float_type: str) -> tuple[Choice, bool]:
    qw = src.quantized(EMBED)
    want = cfg.embeddings
    quant_precision = cfg.precision in ("int8", "int4")
    if want == "auto":
        if qw is not None and quant_precision:
            want = f"int{qw.bits}"
        elif dims.tied and head.kind == "nbits":
            return Choice("gbq", head.qw, head.block), True
        else:
            want = "fp16" if quant_precision else ("float" if float_type == "float32" else "fp16")
    if want in ("float", "fp16"):
        return Choice("float32" if want == "float" else "float16"), False
    bits = int(want[3:])
    if dims.tied and head.kind == "nbits" and head.qw.bits == bits:
        return Choice("gbq", head.qw, head.block), True
    if qw is not None:
        if qw.bits != bits:
            raise ConfigError(f"export-onnx.embeddings: {want}, but the artifact already holds int{qw.bits} "
                              "integers for them; use --embeddings auto (its own) or float")
        block = nbits_block(qw.group_size, qw.shape[1])
        if block is not None:
            return Choice("gbq", qw, block), False
    w = src.float(f"{EMBED}.weight")
    _check_width("embeddings", w.shape[1], cfg.block_size)
    return Choice("gbq", rtn(EMBED, w, bits, cfg.block_size), cfg.block_size), False


def _check_width(what: str, width: int, block: int) -> None:
    if width % block:
        raise ConfigError(f"export-onnx.block_size: {block} does not divide the {what} width {width}; "
                          f"choose one that does (e.g. {next(b for b in (16, 32, 64, 128) if width % b == 0)})"
                          if width % 16 == 0 else f"export-onnx: {what} width {width} is not a multiple of 16; "
                          f"keep it in float")
