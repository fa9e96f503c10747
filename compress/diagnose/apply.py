"""``--apply``: write the fixed artifact, re-quantizing only what changes.

keep8: the artifact's files are copied; the chosen layers are re-quantized to int8 (RTN from the
reference's weights, fixes.int8_meta's grid) and their quantization.json entries rewritten; every other
tensor is copied byte for byte. The manifest keeps the quantize stage (the PyTorch loader and both
exporters read it as any quantized artifact), the original config, and says in its report which
layers diagnose changed and why; its input id is the original's plus the fix, so its content id is new.

group: every layer changes, so quantize is re-run with the smaller group size (said in the report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..manifest import MANIFEST, ArtifactWriter, read_manifest
from ..quantize.format import QUANT_JSON, SUFFIXES, WEIGHTS, open_quantized
from .fixes import int8_fix, int8_meta

log = logging.getLogger(__name__)


def write_keep8(artifact: Path, out: Path, tensors: list[str], reference_weight, *, force: bool = False,
                why: dict[str, Any] | None = None) -> Path:
    """Copy ``artifact`` to ``out`` with ``tensors`` (module names) re-quantized to int8."""
    from safetensors.numpy import save_file

    from ..quantize.config import QuantConfig

    artifact = Path(artifact)
    man = read_manifest(artifact)
    qf = open_quantized(artifact)
    bad = [n for n in tensors if n not in qf.layers]
    if bad:
        raise ConfigError(f"--apply: {bad[0]} is not a quantized layer of {artifact}")
    cfg = QuantConfig.from_dict(man.config, where=str(artifact / MANIFEST))
    digest = hashlib.sha256(json.dumps(sorted(tensors)).encode()).hexdigest()[:12]
    info = json.loads(json.dumps(qf.info))
    changed = set(tensors)
    with ArtifactWriter(out, stage="quantize", config=cfg, input_id=f"{man.input_id}+diagnose-keep8:{digest}",
                        force=force, inputs=[artifact]) as art:
        arrays: dict[str, np.ndarray] = {}
        for stored in qf.store.names():
            if stored.rpartition(".")[0] in changed and stored.endswith(SUFFIXES):
                continue
            arrays[stored] = np.ascontiguousarray(qf.store.raw(stored))
        for n in tensors:
            qt = int8_fix(qf.layers[n], reference_weight(n), n)
            arrays.update({k: v.numpy() for k, v in qt.tensors(n).items()})
            info["layers"][n] = int8_meta(qf.layers[n])
        save_file(arrays, str(art.path / WEIGHTS), metadata={"format": "pt"})
        for f in artifact.iterdir():
            if f.is_file() and f.name not in (WEIGHTS, QUANT_JSON, MANIFEST):
                shutil.copy2(f, art.path / f.name)
        (art.path / QUANT_JSON).write_text(json.dumps(info, indent=1))
        art.report.update({k: v for k, v in man.report.items() if k in ("input", "scheme", "group_size")})
        art.report["diagnose_fix"] = {"fix": "keep8", "from": str(artifact.absolute()), "tensors": tensors,
                                      "int8_grid": "symmetric, group 32 where the width allows (else per channel)",
                                      **(why or {})}
    log.info("wrote %s: %d layers re-quantized to int8, the rest copied", out, len(tensors))
    return Path(out)


def write_group(artifact: Path, out: Path, new_group: int, *, force: bool = False) -> Path:
    """Re-run quantize with ``new_group`` (every layer changes: nothing can be copied)."""
    import dataclasses

    from ..quantize.config import QuantConfig
    from ..quantize.run import run_quantize

    man = read_manifest(artifact)
    cfg = QuantConfig.from_dict(man.config, where=str(Path(artifact) / MANIFEST))
    model = man.report.get("input")
    if not isinstance(model, str):
        raise ConfigError(f"--apply: {artifact}'s manifest does not name the model it was quantized from")
    log.warning("group size %d -> %d changes every layer: re-running quantize on %s", cfg.effective_group_size,
                new_group, model)
    return Path(run_quantize(model, dataclasses.replace(cfg, group_size=new_group), out, force=force))


@torch.no_grad()
def weight_getter(reference):
    """``name -> float32 weight`` of the reference model's module ``name``."""
    from ..quantize.modules import get_module

    return lambda n: get_module(reference, n).weight.detach().float()
