"""onnxruntime's own tools, run over the graph we built: 4/8-bit RTN (MatMulNBitsQuantizer), int8 dynamic
quantization (quantize_dynamic), and the mobile ``.ort`` format (convert_onnx_models_to_ort).

    model = rtn_nbits(model, nodes, bits=4, block_size=32, accuracy_level=4)   # float artifact -> int4/int8
    quantize_int8(src_path, dst_path, nodes)                                   # int8_method="dynamic"
    ort_path = to_ort_format(onnx_path, out_dir)                            # model.ort beside it

Only the nodes we name are touched: an artifact's own integers are already MatMulNBits and never pass
through these quantizers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import onnx

from compress.errors import IncompatibleLayerError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet():
    """The tools print progress to stdout and log every node at INFO (some on the root logger); keep
    the CLI's stdout for results and their chatter at debug level."""
    buf = io.StringIO()
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    for line in buf.getvalue().splitlines():
        log.debug("onnxruntime tools: %s", line)


def _quantizer_class():
    """MatMulNBitsQuantizer, imported without the ``logging.basicConfig(level=INFO)`` its module runs,
    which would otherwise configure the caller's root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer


def rtn_nbits(model: onnx.ModelProto, nodes: list[str], *, bits: int, block_size: int,
              accuracy_level: int) -> onnx.ModelProto:
    """onnxruntime's MatMulNBitsQuantizer (round-to-nearest, symmetric, ``block_size``) on ``nodes``."""
    q = _quantizer_class()(model, bits=bits, block_size=block_size, is_symmetric=True,
                             accuracy_level=accuracy_level, nodes_to_include=nodes, op_types_to_quantize=("MatMul",))
    with _quiet():
        q.process()
    out = q.model.model
    done = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    log.info("MatMulNBitsQuantizer: %d MatMul nodes now int%d", done, bits)
    return out


def quantize_int8(src: Path, dst: Path, nodes: list[str]) -> None:
    """onnxruntime's quantize_dynamic on ``nodes``: int8 weights per output channel (symmetric), uint8
    activations quantized per tensor at run time (MatMulInteger / DynamicQuantizeMatMul on CPU)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def to_ort_format(onnx_path: Path, out_dir: Path) -> Path:
    """``model.ort`` (onnxruntime's mobile format, fixed optimizations) next to ``onnx_path``, written by
    onnxruntime.tools.convert_onnx_models_to_ort; IncompatibleLayerError if the graph cannot be
    converted."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".ort-") as tmp:
        try:
            with _quiet():
                convert_onnx_models_to_ort(onnx_path, output_dir=Path(tmp), optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # the converter raises whatever onnxruntime raised
            raise IncompatibleLayerError(f"{onnx_path}: cannot convert to the .ort format ({str(e).splitlines()[0]})") from None
        made = sorted(Path(tmp).glob("*.ort"))
        if len(made) != 1:
            raise IncompatibleLayerError(f"{onnx_path}: the .ort converter wrote {len(made)} files, expected one")
        target = out_dir / "model.ort"
        shutil.move(str(made[0]), target)
    return target
