"""Which form each weight takes in the ONNX file, decided before any graph is built.

    plan = make_plan(src, dims, OnnxConfig())                 # precision "auto"
    plan.linears["model.layers.0.mlp.down_proj"].kind    # "nbits" (the artifact's integers) or "ort-nbits"
    plan.head.kind, plan.embeddings.kind                  # "nbits" / "gbq" / "float32" / "float16"
    plan.carried()["model.layers.0.mlp.down_proj"]        # "int5 g64 -> MatMulNBits bits 8 block 64 (zero points)"

Rules: integers a quantized artifact holds are carried as they are, each layer in the MatMulNBits that
holds it (int4 -> 4 bits, int8 and 5-bit -> 8 bits; the block a power of two dividing the group); a
precision that would round them again is refused up front (:func:`check_carry`) unless
``requantize``; layers the artifact deliberately kept in float stay float; a float artifact is
quantized by onnxruntime's own tools after the graph is built ("ort-nbits": MatMulNBitsQuantizer at 4
or 8 bits; "dynamic": quantize_dynamic). lm_head and the embedding table follow ``OnnxConfig.lm_head``
/ ``embeddings``; a tied pair quantized to the same integers is stored once.
"""

from __future__ import annotations

import dataclasses
import logging

from compress.errors import ConfigError

from .arch import ModelDims
from .config import OnnxConfig
from .graph import nbits_bits, nbits_block
from .weights import QuantizedWeight, WeightSource, rtn

log = logging.getLogger(__name__)

EMBED = "model.embed_tokens"
HEAD = "lm_head"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
# precision -> the artifact bit widths it carries without rounding them again
CARRIES = {"auto": (4, 5, 8), "int4": (4,), "int8": (5, 8)}


@dataclasses.dataclass
class Choice:
    kind: str  # linears: float | nbits | ort-nbits | dynamic; head: float | nbits; embeddings: float32 | float16 | gbq
    qw: QuantizedWeight | None = None
    block: int | None = None
    note: str = ""
    origin: str = "artifact"  # of qw: "artifact" | "export-rtn" (a float weight) | "requantized" (--requantize)


@dataclasses.dataclass
class Plan:
    linears: dict[str, Choice]
    head: Choice
    embeddings: Choice
    shared: bool  # tied embeddings and lm_head stored once (same integers)
    float_type: str  # "float32" | "float16": storage of float weights
    post: str | None  # "ort-nbits" | "dynamic" | None: onnxruntime tool run over the built graph
    integers: str  # "artifact" | "artifact+head" | "requantized" | "onnxruntime" | "none": where they came from
    precision: str = "fp32"  # cfg.precision with "auto" resolved for a float artifact

    def summary(self) -> dict[str, object]:
        kinds: dict[str, int] = {}
        for c in self.linears.values():
            key = f"nbits-int{c.qw.bits}" if c.kind == "nbits" else c.kind
            kinds[key] = kinds.get(key, 0) + 1
        head = f"int{self.head.qw.bits} ({self.head.origin})" if self.head.kind == "nbits" else self.float_type
        emb = (f"int{self.embeddings.qw.bits} ({self.embeddings.origin})" if self.embeddings.kind == "gbq"
               else self.embeddings.kind)
        notes = sorted({c.note for c in self.linears.values() if c.note})
        five = sum(1 for c in [self.head, *self.linears.values()] if c.kind == "nbits" and c.qw.bits == 5)
        if five:  # MatMulNBits has no 5-bit form: exact in 8 bits, but the file pays 8 bits a weight
            notes.append(f"{five} 5-bit layer{'s' * (five > 1)} held in 8-bit MatMulNBits (exact; 8 bits a weight "
                         "in the file)")
        return {"precision": self.precision, "linears": kinds, "lm_head": head, "embeddings": emb,
                "shared_embeddings": self.shared, "post_quantizer": self.post, "integers": self.integers,
                "notes": notes}

    def carried(self) -> dict[str, str]:
        """How each of the artifact's integer tensors went into the file, by HF module name."""
        out = {}
        for name, c in [*self.linears.items(), (HEAD, self.head), (EMBED, self.embeddings)]:
            if c.qw is not None:
                out[name] = _carried(c)
            elif c.note:
                out[name] = c.note
        return out


def _carried(c: Choice) -> str:
    qw = c.qw
    where = "GatherBlockQuantized" if c.kind == "gbq" else "MatMulNBits"
    rep = qw.group_size // c.block
    zp = " (zero points)" if not (qw.symmetric and qw.bits in (4, 8)) else ""
    how = f"int{qw.bits} g{qw.group_size} -> {where} bits {nbits_bits(qw.bits)} block {c.block}{zp}"
    if rep > 1:
        how += f", scale repeated x{rep}"
    if qw.bits == 5:
        how += ", 5-bit held in 8 bits"
    if c.origin != "artifact":
        how += f" [{c.origin}]"
    return how


def resolve_precision(cfg: OnnxConfig, src: WeightSource) -> str:
    """``auto`` stays ``auto`` for a quantized artifact (every layer as it is) and is ``fp32`` for a float one."""
    if cfg.precision == "auto" and src.quant_info is None:
        return "fp32"
    return cfg.precision


def check_carry(layer_bits: dict[str, int], cfg: OnnxConfig, *, quantized: bool = True) -> None:
    """Refuse, before any work, a precision that would round the artifact's calibrated integers again;
    ``layer_bits``: module name -> bits (quantization.json). The message names the layers, what they
    hold and what would carry them."""
    precision = cfg.precision if quantized else "fp32"
    if precision not in CARRIES or cfg.requantize:
        return
    linears = {n: b for n, b in layer_bits.items() if n not in (HEAD, EMBED)}  # those follow --lm-head/--embeddings
    held: dict[int, list[str]] = {}
    for name, bits in linears.items():
        if bits not in CARRIES[precision]:
            held.setdefault(bits, []).append(name)
    if not held:
        return
    parts = [f"{len(v)} layer{'s' * (len(v) > 1)} hold int{b} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
             for b, v in sorted(held.items())]
    every = set(linears.values())
    others = [p for p, bits in CARRIES.items() if p not in ("auto", precision) and every <= set(bits)]
    also = f" (so does --qtype {others[0]})" if others else ""
    raise ConfigError(
        f"export-onnx.precision: {precision} would round the artifact's calibrated integers again: "
        f"{'; '.join(parts)}. --qtype auto carries every layer exactly (int4 in 4-bit MatMulNBits, int8 and "
        f"5-bit in 8-bit){also}; --requantize re-rounds them to {precision} (round-to-nearest, block "
        f"{cfg.block_size})")


def make_plan(src: WeightSource, dims: ModelDims, cfg: OnnxConfig) -> Plan:
    check_carry({n: qw.bits for n, qw in src.qweights.items()}, cfg, quantized=src.quant_info is not None)
    precision = resolve_precision(cfg, src)
    float_type = "float16" if precision == "fp16" else "float32"
    quantized = src.quant_info is not None
    linears: dict[str, Choice] = {}
    post = None
    for i in range(len(dims.layers)):
        for suffix in dims.linears:  # the family's modules (Phi-3: fused qkv_proj, gate_up_proj)
            name = f"model.layers.{i}.{suffix}"
            linears[name] = _linear_choice(src, name, cfg, precision, quantized)
    if any(c.kind == "ort-nbits" for c in linears.values()):
        post = "ort-nbits"
    elif any(c.kind == "dynamic" for c in linears.values()):
        post = "dynamic"
    head = _head_choice(src, dims, cfg, precision)
    emb, shared = _embedding_choice(src, dims, cfg, precision, head, float_type)
    made = [c for c in [head, emb, *linears.values()] if c.qw is not None and c.origin != "artifact"]
    if post is not None:
        integers = "onnxruntime"
    elif not any(c.qw is not None for c in [head, emb, *linears.values()]):
        integers = "none"
    elif any(c.qw is not None and c.origin == "requantized" for c in [head, emb, *linears.values()]):
        integers = "requantized"
    elif not made:
        integers = "artifact"
    else:
        integers = "artifact+head"
    return Plan(linears, head, emb, shared, float_type, post, integers, precision)


def _linear_choice(src: WeightSource, name: str, cfg: OnnxConfig, precision: str, quantized: bool) -> Choice:
    qw = src.quantized(name)
    if precision in ("fp32", "fp16"):
        return Choice("float", note="dequantized" if qw is not None else "")
    if qw is not None:
        if qw.bits not in CARRIES[precision]:  # check_carry let it through: requantize was asked for
            bits = int(precision[3:])
            return Choice("nbits", rtn(name, src.float(f"{name}.weight"), bits, cfg.block_size), cfg.block_size,
                          note=f"int{qw.bits} re-rounded to int{bits} (--requantize)", origin="requantized")
        block = nbits_block(qw.group_size)
        if block is None:
            log.warning("%s: group size %d has no power-of-two MatMulNBits block; dequantized to float32", name,
                        qw.group_size)
            return Choice("float", note=f"group {qw.group_size} has no MatMulNBits block: dequantized, float32")
        return Choice("nbits", qw, block)
    if quantized:
        return Choice("float", note="kept in float by the artifact")
    return Choice("dynamic" if precision == "int8" and cfg.int8_method == "dynamic" else "ort-nbits")


def _head_choice(src: WeightSource, dims: ModelDims, cfg: OnnxConfig, precision: str) -> Choice:
    qw = src.quantized(HEAD) or (src.quantized(EMBED) if dims.tied else None)
    want = cfg.lm_head
    if want == "auto":
        if precision in ("fp32", "fp16"):
            return Choice("float")
        if qw is not None:  # the artifact's own integers, whatever their width
            return _carry_or_float(qw, HEAD)
        if precision == "auto":
            return Choice("float")  # as the artifact holds it
        # 8-bit MatMulNBits with float activations (accuracy_level 0) is onnxruntime's slow path on CPU
        # (a 49152x576 lm_head: ~500 ms per token); float32 is the faster exact choice there
        want = "float" if cfg.fixed_level == 0 else "int8"
    if want == "float":
        return Choice("float")
    bits = int(want[3:])
    if qw is not None:
        if nbits_bits(qw.bits) == bits:
            return _carry_or_float(qw, HEAD)
        if not cfg.requantize:
            raise ConfigError(f"export-onnx.lm_head: {want}, but the artifact already holds int{qw.bits} integers for "
                              f"it; use --lm-head auto (its own) or float (dequantized), or --requantize to re-round "
                              f"them")
    w = src.float(f"{HEAD}.weight") if src.has(f"{HEAD}.weight") else src.float(f"{EMBED}.weight")
    _check_width("lm_head", w.shape[1], cfg.block_size)
    origin = "requantized" if qw is not None else "export-rtn"
    return Choice("nbits", rtn(HEAD, w, bits, cfg.block_size), cfg.block_size, origin=origin)


def _carry_or_float(qw: QuantizedWeight, what: str) -> Choice:
    block = nbits_block(qw.group_size)
    if block is None:
        log.warning("%s: group size %d has no MatMulNBits block; dequantized to float32", what, qw.group_size)
        return Choice("float", note=f"group {qw.group_size} has no MatMulNBits block: dequantized, float32")
    return Choice("nbits", qw, block)


def _embedding_choice(src: WeightSource, dims: ModelDims, cfg: OnnxConfig, precision: str, head: Choice,
                      float_type: str) -> tuple[Choice, bool]:
    qw = src.quantized(EMBED)
    want = cfg.embeddings
    quant_precision = precision in ("int8", "int4", "auto")
    if want == "auto":
        if qw is not None and quant_precision:
            want = f"int{nbits_bits(qw.bits)}"
        elif dims.tied and head.kind == "nbits":
            return Choice("gbq", head.qw, head.block, origin=head.origin), True
        elif precision == "auto":
            want = "float"  # as the artifact holds it
        else:
            want = "fp16" if quant_precision else ("float" if float_type == "float32" else "fp16")
    if want in ("float", "fp16"):
        return Choice("float32" if want == "float" else "float16"), False
    bits = int(want[3:])
    if dims.tied and head.kind == "nbits" and nbits_bits(head.qw.bits) == bits:
        return Choice("gbq", head.qw, head.block, origin=head.origin), True
    if qw is not None:
        if nbits_bits(qw.bits) == bits:
            block = nbits_block(qw.group_size)
            if block is not None:
                return Choice("gbq", qw, block), False
            log.warning("embeddings: group size %d has no GatherBlockQuantized block; dequantized to float32",
                        qw.group_size)
            return Choice("float32", note=f"group {qw.group_size} has no block: dequantized, float32"), False
        elif not cfg.requantize:
            raise ConfigError(f"export-onnx.embeddings: {want}, but the artifact already holds int{qw.bits} "
                              "integers for them; use --embeddings auto (its own) or float, or --requantize to "
                              "re-round them")
    w = src.float(f"{EMBED}.weight")
    _check_width("embeddings", w.shape[1], cfg.block_size)
    origin = "requantized" if qw is not None else "export-rtn"
    return Choice("gbq", rtn(EMBED, w, bits, cfg.block_size), cfg.block_size, origin=origin), False


def _check_width(what: str, width: int, block: int) -> None:
    if width % block:
        raise ConfigError(f"export-onnx.block_size: {block} does not divide the {what} width {width}; "
                          f"choose one that does (e.g. {next(b for b in (16, 32, 64, 128) if width % b == 0)})"
                          if width % 16 == 0 else f"export-onnx: {what} width {width} is not a multiple of 16; "
                          f"keep it in float")
