"""The gate's diagnosis section: when ``compress check`` fails, say where the loss is.

    lines = diagnose_failures(result, "runs/bench")   # ["int4 (llama.cpp): the quantizer: model.layers.3..."]

Each failing row whose artifact is a quantized artifact, or an export of one, is diagnosed once (short:
``tokens``), against the bench run's own reference. A diagnosis that cannot run says why in its line;
it never hides the gate's verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import CompressError

log = logging.getLogger(__name__)


def diagnosable(path: Path) -> bool:
    from .exported import export_source

    if not path.is_dir():
        return False
    if (path / "quantization.json").is_file():
        return True
    exp = export_source(path)
    return exp is not None and exp[1] is not None and (exp[1] / "quantization.json").is_file()


def diagnose_failures(result, run_dir: str | Path, *, tokens: int = 256, threads: int = 2) -> list[str]:
    """One line per failing artifact: where its loss is (the layer or the export's tensor), or why not."""
    from ..harness.runner import read_rows
    from ..manifest import read_manifest
    from .config import DiagnoseConfig
    from .render import headline
    from .run import diagnose

    rows = {(r["label"], r["runtime"]): r for r in read_rows(run_dir)}
    reference = read_manifest(run_dir).report.get("reference")
    lines: list[str] = []
    seen: set[str] = set()
    for f in result.failures():
        row: dict[str, Any] | None = rows.get((f["label"], f["runtime"]))
        if row is None or row["artifact"] in seen:
            continue
        seen.add(row["artifact"])
        path = Path(str(row["artifact"]))
        if not diagnosable(path):
            lines.append(f"{f['label']} ({f['runtime']}): not diagnosed (not a quantized artifact or an export of one)")
            continue
        cfg = DiagnoseConfig(reference=reference, tokens=tokens, threads=threads)
        try:
            lines.append(f"{f['label']} ({f['runtime']}): {headline(diagnose(path, cfg))}")
        except (CompressError, OSError) as e:
            lines.append(f"{f['label']} ({f['runtime']}): not diagnosed ({e})")
    return lines
