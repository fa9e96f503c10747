"""``OnnxConfig``: the one frozen, versioned config of the ONNX export, and its per-precision tolerances.

    >>> cfg = OnnxConfig(precision="int4", accuracy_level=0)
    >>> OnnxConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> cfg.tolerance("artifact", int8_activations=False)
    Tolerance(min_top1=0.98, max_kl=0.02, max_abs=None)

Precisions (what onnxruntime's CPU provider runs):

- ``auto`` (the default): a quantized artifact goes in as it is, layer by layer: int4 integers in
  4-bit ``MatMulNBits``, int8 and 5-bit integers in 8-bit ``MatMulNBits`` (5-bit costs 8 bits a weight
  there: the kernel has no 5-bit form; its zero points make it exact), layers the artifact kept in
  float stay float32, and the token table / lm_head as the artifact holds them. A float artifact
  exports as ``fp32``.
- ``fp32``: every weight in float32.
- ``fp16``: weights *stored* as float16 (half the file), upcast to float32 when the session loads,
  because the CPU provider has no float16 MatMul; activations and the KV cache stay float32.
- ``int8``: a quantized artifact's own int8 (and 5-bit) integers go into ``MatMulNBits(bits=8)`` unchanged; a float
  artifact goes through onnxruntime's ``MatMulNBitsQuantizer`` with 8 bits (round-to-nearest per
  ``block_size``), or, with ``int8_method="dynamic"``, through ``onnxruntime.quantization.quantize_dynamic``
  (int8 weights per output channel, uint8 activations quantized per *tensor* at run time:
  MatMulInteger / DynamicQuantizeMatMul). Per-tensor activations cannot represent SmolLM2's outlier
  channels: its dynamic export agrees 48% top-1 with PyTorch and is refused by the validation.
- ``int4``: a quantized artifact's own int4 integers go into ``MatMulNBits`` unchanged, so GPTQ/AWQ
  calibration survives; a float artifact goes through onnxruntime's ``MatMulNBitsQuantizer``
  (round-to-nearest, ``block_size``, symmetric).

A precision that would round an artifact's calibrated integers again (int4 for an int8 or 5-bit
layer, int8 for an int4 layer) is refused up front, naming the layers and ``auto`` (which carries
them), unless ``requantize`` says to re-round them (round-to-nearest per ``block_size``; the
validation then holds the file to that precision's own tolerance, since it is no longer the
artifact's integers).

``accuracy_level`` (MatMulNBits): 0 computes with float activations (PyTorch's numbers); 4 quantizes
the activations to int8 per block inside the kernel, which is what makes int4 decode fast on CPU (one
MatMulNBits 3-8x, SmolLM2 decode 1.5-2x) at a small cost in agreement (94-98% top-1 instead of 100%).
``auto`` (the default) starts with 4 on every MatMulNBits node and, where the file then fails the
int8-activation tolerance, measures which kind of node (lm_head, down_proj, ...) the error comes from
and gives level 0 to those kinds only, until it passes (:mod:`.levels`); the level of every node is
recorded in the manifest.
``kv_dtype`` (float32 | float16): the element type of the KV cache (``past_key_values.*`` / ``present.*``).
onnxruntime's CPU GroupQueryAttention runs a float32 query with a float32 or float16 cache; float16 halves the
cache's memory at a cost in attention speed (the kernel widens every cached row at every step, :mod:`.kv`). Its
int8/4-bit caches need calibrated static scales and bfloat16 is no CPU cache type for a float32 query: both are
refused, naming the field.
``lm_head``/``embeddings`` choose the precision of the output projection and the token table: the
output projection is read in full for every token (SmolLM2: 29 tok/s with a float32 one, 40 with
int8) and is where 4-bit quality breaks first (77% top-1), so ``auto`` keeps it at int8.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Optional, Union

from compress.config import StageConfig, register_config, suggest
from compress.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "int8", "int4")
HEAD_PRECISIONS = ("auto", "float", "int8", "int4")
EMBEDDING_PRECISIONS = ("auto", "float", "fp16", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
AUTO_LEVEL = "auto"
INT8_METHODS = ("nbits", "dynamic")
KV_DTYPES = ("float32", "float16")
SCALE_TYPES = ("auto", "float32", "float16")
# what onnxruntime's CPU GroupQueryAttention offers beyond KV_DTYPES, and why this export does not
_KV_REFUSED = {"int8": "keeps an int8 cache only with static k_scale/v_scale, which this export does not calibrate",
               "int4": "keeps a 4-bit cache only with static k_scale/v_scale, which this export does not calibrate",
               "bfloat16": "takes no bfloat16 cache with the float32 query of this export's graphs"}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """onnxruntime vs PyTorch on the same token ids: top-1 agreement at least, mean KL at most, and
    (fp32 only) the largest absolute logit difference at most."""

    min_top1: float
    max_kl: float
    max_abs: float | None = None


# The reference is always the PyTorch model of the same artifact. fp32 is the target
# (>= 99.9% top-1); the others were set from SmolLM2-135M / Gemma3-270M runs (benchmarks/RESULTS.md)
# with room for other models, and still catch real breakage (a wrong rope, norm offset or window
# gives KL > 1 and top-1 < 50%).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(0.999, 1e-4, 0.05),
    "fp16": Tolerance(0.98, 2e-3),
    "int8": Tolerance(0.90, 0.05),  # new int8 weights, int8 activations per block (or per tensor: dynamic)
    "int4": Tolerance(0.80, 0.15),  # onnxruntime's RTN over a float artifact
}
# The artifact's own integers went in unchanged and the kernel computes in float (accuracy_level 0):
# only summation order separates the two. The target for int4: >= 98% top-1.
EXACT_TOLERANCE = Tolerance(0.98, 0.02)
# The artifact's integers, but int8 activations inside MatMulNBits (accuracy_level > 0 on any node), or an lm_head /
# embedding table the export rounded to int8 itself: on SmolLM2-135M (GPTQ int4, 128 tokens) the
# float-compute export agrees 100%, the int8-activation one 94-98%; the residual stream's outlier
# channels are what per-block int8 activations round coarsely.
INT8_ACTIVATION_TOLERANCE = Tolerance(0.90, 0.05)


@register_config("export-onnx")
@dataclasses.dataclass(frozen=True, kw_only=True)
class OnnxConfig(StageConfig):
    """How to build the ONNX decoder and how hard to check it.

    precision: auto | fp32 | fp16 | int8 | int4 (see the module docstring).
    requantize: allow a precision that rounds the artifact's integers again (refused otherwise).
    accuracy_level: MatMulNBits compute precision, 0 (float activations) .. 4 (int8 activations, fastest),
        the same on every node; or ``auto``: 4, and 0 on the kinds of node measured to need it.
    block_size: weights per scale where the export itself quantizes (onnxruntime's RTN, and lm_head /
        embeddings when asked); a quantized artifact keeps its own groups.
    lm_head: auto | float | int8 | int4. ``auto``: the artifact's integers if it quantized the output
        projection; with precision ``auto``, else float (as the artifact holds it); for int8/int4, int8
        (float32 at accuracy_level 0, where 8-bit is slow); else float.
    embeddings: auto | float | fp16 | int8 | int4. ``auto``: the artifact's integers if it quantized the
        table; with precision ``auto``, else float32 (as held); for int4/int8, the same integers as a
        tied lm_head (stored once), else fp16; else the precision's float type.
    max_length: positions the rotary tables cover (the longest sequence the file runs); 0 = the model's
        max_position_embeddings, otherwise capped by it.
    int8_method: nbits | dynamic: the onnxruntime tool that makes a float artifact int8 (module docstring).
    kv_dtype: float32 | float16: the KV cache's element type. onnxruntime's CPU GroupQueryAttention keeps the
        query float32 either way (the graph's activations are float32) and takes the cache in its own type;
        float16 halves the cache's memory but is slower on CPU. int8/int4 (static scales) and bfloat16 are refused.
    scale_type: auto | float32 | float16: the element type of MatMulNBits / GatherBlockQuantized scales that hold
        the artifact's integers. float16 stores the artifact's scales as they are (float16 values: nothing is
        rounded) at half the bytes (int4 block 32: 4.5 bits a weight instead of 5.0; int8 8.5 instead of 9.0), and
        runs those nodes with float16 activations (a Cast in and out; a few percent of speed, :mod:`.scales`).
        ``auto``: float16 on every 4-bit node whose activations stayed within float16's safe range on the check
        tokens (measured in PyTorch); float32 on 8-bit nodes (float16 activations cost an int8 node quality:
        SmolLM2's int8 file went from KL 0.0082 to 0.0086) and elsewhere. float32: the files before version 4.
    ort_format: also write onnxruntime's mobile ``model.ort`` (where the graph allows).
    check_tokens: token ids scored by both onnxruntime and PyTorch after writing.
    min_top1 / max_kl / max_abs: override the precision's tolerance (None = :data:`TOLERANCES`).
    """

    # 2: precision "auto" (the new default), accuracy_level "auto", requantize; 3: kv_dtype, and the graph
    # declares a shared past/present KV buffer (a version 2 file exports again to get it); 4: scale_type (auto:
    # float16 scales where the activations allow)
    VERSION: ClassVar[int] = 4

    precision: str = "auto"
    requantize: bool = False
    accuracy_level: Union[int, str] = AUTO_LEVEL
    block_size: int = 32
    lm_head: str = "auto"
    embeddings: str = "auto"
    max_length: int = 8192
    int8_method: str = "nbits"
    kv_dtype: str = "float32"
    scale_type: str = "auto"
    ort_format: bool = False
    check_tokens: int = 64
    min_top1: Optional[float] = None
    max_kl: Optional[float] = None
    max_abs: Optional[float] = None

    def validate(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        _choice("lm_head", self.lm_head, HEAD_PRECISIONS)
        _choice("embeddings", self.embeddings, EMBEDDING_PRECISIONS)
        _choice("int8_method", self.int8_method, INT8_METHODS)
        if self.kv_dtype in _KV_REFUSED:
            raise ConfigError(f"export-onnx.kv_dtype: {self.kv_dtype!r}: onnxruntime's CPU GroupQueryAttention "
                              f"{_KV_REFUSED[self.kv_dtype]}; one of: {', '.join(KV_DTYPES)}")
        if self.kv_dtype in ("fp32", "fp16"):  # the precision's spelling, too far from the type's for suggest()
            raise ConfigError(f"export-onnx.kv_dtype: {self.kv_dtype!r} is not one of: {', '.join(KV_DTYPES)} "
                              f"(did you mean 'float{self.kv_dtype[2:]}'?)")
        _choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        _choice("scale_type", self.scale_type, SCALE_TYPES)
        if self.accuracy_level != AUTO_LEVEL and (isinstance(self.accuracy_level, bool)
                                                  or self.accuracy_level not in ACCURACY_LEVELS):
            raise ConfigError(f"export-onnx.accuracy_level: {self.accuracy_level!r} is not one of "
                              f"auto, {', '.join(map(str, ACCURACY_LEVELS))} (0 unset/float .. 4 int8 compute; "
                              "auto: 4 where the export validates, 0 where it does not)")
        if self.accuracy_level == 0 and (self.precision == "int8" or self.lm_head == "int8"):
            log.warning("export-onnx: 8-bit MatMulNBits at accuracy_level 0 is onnxruntime's slow CPU path "
                        "(tens of times slower than level 4)")
        if self.block_size not in BLOCK_SIZES:
            raise ConfigError(f"export-onnx.block_size: {self.block_size} is not one of "
                              f"{', '.join(map(str, BLOCK_SIZES))} (MatMulNBits needs a power of two >= 16)")
        if self.max_length < 0:
            raise ConfigError(f"export-onnx.max_length: {self.max_length} must be >= 0 (0 = the model's own)")
        if self.max_length and self.max_length < self.check_tokens:
            raise ConfigError(f"export-onnx.max_length: {self.max_length} is shorter than check_tokens "
                              f"({self.check_tokens})")
        if not 8 <= self.check_tokens <= 4096:
            raise ConfigError(f"export-onnx.check_tokens: {self.check_tokens} must be between 8 and 4096")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise ConfigError(f"export-onnx.min_top1: {self.min_top1} must be in [0, 1]")
        for name in ("max_kl", "max_abs"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"export-onnx.{name}: {value} must be >= 0")

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        # version 1 meant fp32 and accuracy_level 4 where a file left them out: keep what it asked for
        data = dict(data)
        if from_version < 2:
            data.setdefault("precision", "fp32")
            data.setdefault("accuracy_level", 4)
        # version 2 had no kv_dtype: its cache was float32, the default
        if from_version < 4:  # version 3 files were written with float32 scales
            data.setdefault("scale_type", "float32")
        data["version"] = cls.VERSION
        return data

    @property
    def fixed_level(self) -> int | None:
        """The one accuracy_level of every MatMulNBits node, or None for ``auto``."""
        return None if self.accuracy_level == AUTO_LEVEL else int(self.accuracy_level)

    def tolerance(self, integers: str = "", *, int8_activations: bool | None = None) -> Tolerance:
        """The thresholds for what the file holds. ``integers`` says where a quantized export's integers
        came from: "artifact" (all the artifact's own), "artifact+head" (plus an lm_head / embedding
        table the export rounded to int8), anything else ("onnxruntime", "requantized": integers the
        export made): the precision's own. ``int8_activations``: whether any MatMulNBits node computes
        with int8 activations (default: accuracy_level is not 0)."""
        if int8_activations is None:
            int8_activations = self.fixed_level != 0
        base = TOLERANCES["fp32" if self.precision == "auto" else self.precision]
        if integers == "artifact":
            base = INT8_ACTIVATION_TOLERANCE if int8_activations else EXACT_TOLERANCE
        elif integers == "artifact+head":
            base = INT8_ACTIVATION_TOLERANCE
        elif integers == "requantized" and self.precision not in ("int8", "int4"):
            base = TOLERANCES["int4"]  # an lm_head / table re-rounded at the user's request under auto
        return Tolerance(base.min_top1 if self.min_top1 is None else self.min_top1,
                         base.max_kl if self.max_kl is None else self.max_kl,
                         base.max_abs if self.max_abs is None else self.max_abs)


def _choice(field: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"export-onnx.{field}: {value!r} is not one of: {', '.join(options)}"
                          f"{suggest(value, options)}")
