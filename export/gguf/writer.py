"""Stream a planned GGUF to disk with gguf-py's writer: header and tensor infos first, then each
tensor's data as it is produced, so that peak memory is about one tensor, not the whole model.

    >>> write_gguf(path, "llama", metadata, plan, src)
"""

from __future__ import annotations

import logging
from pathlib import Path

from gguf import GGUFWriter

from compress.errors import ArtifactError
from compress.progress import track

from . import blocks
from .metadata import Metadata
from .plan import TensorPlan
from .source import ExportSource

log = logging.getLogger(__name__)


def write_gguf(path: Path, arch: str, metadata: Metadata, plan: list[TensorPlan], src: ExportSource) -> int:
    """Write the file; returns its size in bytes. The caller owns cleanup (ArtifactWriter's temp dir)."""
    writer = GGUFWriter(path, arch)
    try:
        metadata.write_to(writer)
        for t in plan:
            shape, dtype, nbytes = blocks.stored_layout(t.shape, t.qtype)
            writer.add_tensor_info(t.gguf_name, shape, dtype, nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in track(plan, f"writing {path.name}", total=len(plan)):
            data = t.produce(src)
            if data.nbytes != t.nbytes:  # a wrong layout would shift every later tensor
                raise ArtifactError(f"{t.hf_name}: produced {data.nbytes} bytes for {t.gguf_name} "
                                    f"({t.qtype.name} {list(t.shape)}), expected {t.nbytes}")
            writer.write_tensor_data(data)
    finally:
        writer.close()
    size = path.stat().st_size
    log.info("wrote %s: %d tensors, %.1f MB", path, len(plan), size / 1e6)
    return size
