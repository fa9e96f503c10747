"""Numbers are finite: NaN and infinities are refused wherever they enter, and never written out.

    require_finite(0.02, "--tolerance ppl")          # returns the value
    require_finite(float("nan"), "--tolerance ppl")  # NonFiniteError: --tolerance ppl: nan is not a finite number
    check_artifact_finite(Path(".q.tmp-1-ab12cd34"))  # every float tensor of every .safetensors file

Why everywhere: NaN compares False with everything, so ``value <= budget`` or ``current > limit``
silently pass, and ``lr=inf`` trains a model of NaNs that still looks like a finished artifact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, CompressError, NonFiniteError

# safetensors dtype -> (unsigned view, mask of the exponent bits): all exponent bits set = inf or NaN.
# Bit tests on raw bytes need neither torch nor a float copy (bf16 has no numpy dtype).
_EXPONENT = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000),
             "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}
_CHUNK = 1 << 24  # bytes read at a time: the check adds 16 MB to a stage's peak memory, not a tensor's size


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_finite(value: Any, where: str, error: type[CompressError] = NonFiniteError) -> Any:
    """``value`` when it is not a float, or a finite one; ``error`` naming ``where`` otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where}: {value} is not a finite number")
    return value


def require_finite_tree(value: Any, where: str, error: type[CompressError] = NonFiniteError) -> None:
    """Every float inside lists, tuples and dicts (config values, metric rows) is finite."""
    if isinstance(value, dict):
        for k, v in value.items():
            require_finite_tree(v, f"{where}.{k}", error)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            require_finite_tree(v, f"{where}[{i}]", error)
    else:
        require_finite(value, where, error)


def nonfinite_tensors(model) -> list[str]:
    """``name (n NaN, m inf)`` for every parameter of a torch model holding a NaN or an infinity."""
    import torch

    bad = []
    for name, p in model.named_parameters():
        finite = torch.isfinite(p)
        if not bool(finite.all()):
            nans = int(torch.isnan(p).sum())
            bad.append(f"{name} ({nans} NaN, {int((~finite).sum()) - nans} inf)")
    return bad


def check_artifact_finite(folder: Path) -> None:
    """Raise NonFiniteError naming the file and tensor when a float tensor of a ``.safetensors`` file or
    an F32/F16/BF16 tensor of a ``.gguf`` file under ``folder`` holds NaN or an infinity (block-quantized
    GGUF tensors are left to the export's own validation in llama.cpp)."""
    files = sorted(folder.rglob("*.safetensors")) + sorted(folder.rglob("*.gguf"))
    for f in files:
        bad = first_nonfinite_tensor(f) if f.suffix == ".safetensors" else first_nonfinite_gguf_tensor(f)
        if bad is not None:
            raise NonFiniteError(f"{f.name}: tensor {bad!r} holds NaN or infinite values; the artifact was not "
                                 "written (a diverged training run or a broken input model)")


def first_nonfinite_tensor(path: Path) -> str | None:
    """Name of the first float tensor of a safetensors file with a NaN/inf, or None."""
    from .checkpoints import safetensors_header  # the one reader of the header (a corrupt one: ArtifactError)

    header, start = safetensors_header(Path(path), ArtifactError)
    spans = [(name, info["dtype"], start + info["data_offsets"][0], info["data_offsets"][1] - info["data_offsets"][0])
             for name, info in header.items() if info["dtype"] in _EXPONENT]
    with open(path, "rb") as fh:
        return _first_bad_span(fh, spans)


def first_nonfinite_gguf_tensor(path: Path) -> str | None:
    """Name of the first F32/F16/BF16 tensor of a GGUF file with a NaN/inf, or None."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    kinds = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16"}
    reader = GGUFReader(str(path))  # header only: tensor bytes are read below, in chunks
    spans = [(t.name, kinds[t.tensor_type], int(t.data_offset), int(t.n_bytes)) for t in reader.tensors
             if t.tensor_type in kinds]
    del reader
    with open(path, "rb") as fh:
        return _first_bad_span(fh, spans)


def _first_bad_span(fh, spans: list[tuple[str, str, int, int]]) -> str | None:
    for name, dtype, offset, size in spans:
        view, mask = _EXPONENT[dtype]
        fh.seek(offset)
        left = size
        width = np.dtype(view).itemsize
        while left > 0:
            block = fh.read(min(_CHUNK - _CHUNK % width, left))
            if not block:
                break
            left -= len(block)
            bits = np.frombuffer(block, dtype=view)
            if np.any((bits & view(mask)) == view(mask)):
                return name
    return None
