"""The export's files: ``model.onnx`` (the graph) and ``model.onnx.data`` (its weights, mapped).

    save_model(model, folder / MODEL_FILE)      # model.onnx + model.onnx.data; the model's tensors now point there

Why external data: onnxruntime memory-maps an initializer stored in an external data file (read-only,
file-backed pages) and keeps it mapped where no kernel repacks it, while an initializer inside the protobuf
is parsed into the heap and copied again into a tensor. Measured on Gemma3-270M int4 (256 MiB of
weights): 555 MiB of anonymous memory after the session loads with every initializer inside model.onnx,
322 MiB with them in model.onnx.data (benchmarks/RESULTS.md, "ONNX memory (#14)"). File-backed pages are
also the ones a phone can drop under pressure and read again.

Layout: every initializer of at least :data:`EXTERNAL_MIN` bytes goes to the data file in graph order; those of
:data:`ALIGN_MIN` bytes or more start on a multiple of :data:`ALIGN`, as onnxruntime's own saver aligns them
(ModelSavingOptions: align_threshold 1 MB, on_disk_alignment_factor 4096, the page size of Linux and most
Android devices), so a large weight maps from its first byte without sharing a page. onnxruntime 1.32 on Linux
maps unaligned ones as well (measured: a SmolLM2 file with no padding at all loads with the same anonymous
memory), so smaller tensors are not padded, which would grow a tiny model's file by several percent. Initializers
under EXTERNAL_MIN (norm weights, shape constants) stay in the graph. onnxruntime-genai and ``onnx.load`` read
the same folder unchanged.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

MODEL_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx.data"
ALIGN = 4096
ALIGN_MIN = 1 << 20
EXTERNAL_MIN = 4096


def data_file(path: Path) -> Path:
    """The external data file of the graph file ``path`` (``model.onnx`` -> ``model.onnx.data``)."""
    return path.with_name(path.name + ".data")


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` as ``path`` plus its external data file, page-aligned (see the module docstring).

    The model's initializers are moved, not copied: each large one's bytes go to the file and the tensor
    is left pointing at them (one copy of the weights in memory at any time). Initializers that already
    point at that file (a graph loaded with ``load_external_data=False`` and edited) keep their bytes and
    offsets; new bytes are appended after them.

    >>> save_model(onnx.load("in/model.onnx"), Path("out/model.onnx"))   # out/model.onnx + out/model.onnx.data
    """
    path = Path(path)
    data = data_file(path)
    tensors = list(model.graph.initializer)
    kept = any(_location(t) == data.name for t in tensors)
    pending = [t for t in tensors if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN]
    if not kept:
        data.unlink(missing_ok=True)  # a stale file from an earlier save that nothing points at any more
    if pending:
        with open(data, "ab") as fh:
            for t in pending:
                pos = fh.seek(0, 2)
                pad = -pos % ALIGN if len(t.raw_data) >= ALIGN_MIN else 0
                if pad:
                    fh.write(b"\0" * pad)
                    pos += pad
                fh.write(t.raw_data)
                set_external_data(t, data.name, offset=pos, length=len(t.raw_data))
                t.data_location = onnx.TensorProto.EXTERNAL
                t.ClearField("raw_data")
    onnx.save_model(model, str(path))


def remove_model(path: Path) -> None:
    """Delete a graph file and its external data."""
    Path(path).unlink()
    data_file(Path(path)).unlink(missing_ok=True)


def model_bytes(folder: Path) -> int:
    """Bytes on disk of the graph and its external data."""
    return sum(f.stat().st_size for f in (folder / MODEL_FILE, folder / EXTERNAL_DATA) if f.exists())


def _location(t: onnx.TensorProto) -> str | None:
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return next((e.value for e in t.external_data if e.key == "location"), None)
