"""k-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer.

gguf-py cannot write k-quants, and llama.cpp's quantizer also chooses the per-tensor mix that makes
``_M`` what it is (attn_v / ffn_down at higher precision in some layers, output at Q6_K). So the
export writes an F32 GGUF first and hands it to ``llama_model_quantize``.

    >>> quantize_with_llama_cpp(f32_path, out_path, "Q4_K_M", threads=2)
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from compress.errors import ExportMismatchError, IncompatibleLayerError, optional_import
from runtimes.quiet import captured_output

log = logging.getLogger(__name__)

_FTYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
           "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K"}
QK_K = 256  # a k-quant row is whole 256-wide super-blocks
# what llama.cpp's quantizer writes instead, for a row that is not (llama-quant.cpp: Q4_K -> Q5_0, Q5_K -> Q5_1,
# Q6_K -> Q8_0; the _M mixes put some tensors at Q6_K)
FALLBACK = {"Q4_K_M": "Q5_0 and Q8_0", "Q5_K_M": "Q5_1 and Q8_0", "Q6_K": "Q8_0"}


def row_widths(hidden: int, attention: int, ff: int) -> dict[str, int]:
    """The row lengths (input widths) of a decoder's matrices, named by the config.json fields they come from:
    embeddings, output, q/k/v and gate/up read ``hidden``, o_proj the attention width, down_proj the MLP's."""
    return {"hidden_size": hidden, "num_attention_heads x head_dim": attention, "intermediate_size": ff}


def config_row_widths(config: dict) -> dict[str, int]:
    """:func:`row_widths` from config.json alone (``--dry-run``)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return row_widths(hidden, heads * head_dim, int(config["intermediate_size"]))


def check_kquant_rows(qtype: str, widths: dict[str, int]) -> str:
    """How the k-quant ``qtype`` fits rows of ``widths`` (:func:`row_widths`): a note naming the widths
    llama.cpp falls back on, or IncompatibleLayerError naming ``export-gguf.qtype`` when no row is whole
    256-wide super-blocks: every matrix would be stored in the fallback types, a file named ``qtype`` without
    a single k-quant in it (a tiny Phi-3 96 wide, say). Checked before any weight is read."""
    misfit = {k: w for k, w in widths.items() if w % QK_K}
    shown = ", ".join(f"{k} {w}" for k, w in misfit.items())
    if len(misfit) == len(widths):
        raise IncompatibleLayerError(
            f"export-gguf.qtype: {qtype} needs rows of whole {QK_K}-wide super-blocks and no matrix of this model has "
            f"them ({shown}): llama.cpp would store every one as {FALLBACK[qtype]}, a {qtype} file without a k-quant "
            f"in it; choose Q8_0, Q5_0 or Q4_0 (32-wide blocks) instead: --qtype Q4_0 (recipe: qtype: Q4_0 in the "
            f"export entry)")
    if misfit:
        return f"{shown} not a multiple of {QK_K}: those rows fall back to {FALLBACK[qtype]}"
    return ""


def quantize_with_llama_cpp(src: Path, dst: Path, qtype: str, *, threads: int, embedding_type: str | None = None,
                            imatrix: dict[str, np.ndarray] | None = None) -> None:
    """Quantize ``src`` (F32/F16 GGUF) into ``dst``; ``embedding_type`` pins token_embd/output;
    ``imatrix`` maps GGUF tensor names to per-input-column importances (see :mod:`.imatrix`)."""
    llama_cpp = optional_import("llama_cpp", "k-quants need llama.cpp's quantizer", "llama-cpp-python")
    from gguf import GGMLQuantizationType

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[qtype])
    params.nthread = threads
    if embedding_type is not None:
        params.token_embedding_type = int(GGMLQuantizationType[embedding_type])
        params.output_tensor_type = int(GGMLQuantizationType[embedding_type])
    keep: list = []  # ctypes only points into these: they must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), arr]
            entries[i].name = keep[-2]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None  # llama.cpp reads up to the entry without a name
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    with captured_output() as captured:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    text = captured()
    fallbacks = [line.split("-")[0].replace("warning:", "").strip() for line in text.splitlines()
                 if "falling back" in line]
    if fallbacks:  # rows that are not whole 256-wide super-blocks: llama.cpp picks a smaller type
        log.info("llama.cpp used a fallback type for %d tensors (width not a multiple of 256)", len(fallbacks))
    if rc != 0 or not dst.is_file():
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise ExportMismatchError(f"llama.cpp's quantizer failed on {src.name} -> {qtype} (return code {rc}): {tail}")
    log.info("llama.cpp quantized %s -> %s (%s)", src.name, dst.name, qtype)

