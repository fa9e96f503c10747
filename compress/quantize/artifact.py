"""The quantized artifact on disk (layout in FORMAT.md) and its PyTorch loader.

    save_artifact(art.path, model, tokenizer, result)   # inside an ArtifactWriter (stage "quantize")
    lm = load_model("out/smollm2-int4")                 # compress.kinds names load_quantized for it

The loader rebuilds the transformers model from config.json and puts in exactly (q - zero) * scale
for every quantized tensor, read through format.py (the one reader, which the exporters use too), so
what PyTorch evaluates is what every exporter reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError
from .core import QuantResult
from .format import QUANT_JSON, WEIGHTS, QuantizedWeight, open_quantized, read_quantization_json
from .grid import Grid, QTensor
from .modules import apply_weight

__all__ = ["QUANT_JSON", "WEIGHTS", "load_qtensors", "load_quantized", "read_quantization_json", "save_artifact"]


def save_artifact(path: Path, model, tokenizer, result: QuantResult) -> None:
    """Write config.json, tokenizer files, model.safetensors and quantization.json into ``path``."""
    from safetensors.torch import save_file

    quantized = set(result.tensors)
    tied_head = f"{result.plan.lm_head_name}.weight" if result.plan.tied else None
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if (module in quantized and leaf == "weight") or key == tied_head:
            continue
        tensors[key] = value.detach().to(torch.float32).contiguous()
    for name, qt in result.tensors.items():
        tensors.update(qt.tensors(name))
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    model.config.to_json_file(str(path / "config.json"))
    tokenizer.save_pretrained(str(path))
    (path / QUANT_JSON).write_text(json.dumps(result.quantization_json(), indent=1))


def load_qtensors(folder: Path, info: dict[str, Any] | None = None) -> dict[str, QTensor]:
    """The stored integers of every quantized tensor, unpacked, as QTensors (tests, PyTorch-side checks)."""
    qf = open_quantized(folder)
    return {qw.name: _qtensor(qw) for qw in qf.quantized_weights()}


def _qtensor(qw: QuantizedWeight) -> QTensor:
    zeros = None if qw.zeros is None else torch.from_numpy(np.array(qw.zeros))
    return QTensor(torch.from_numpy(np.array(qw.integers())), torch.from_numpy(np.array(qw.scales)), zeros,
                   Grid(qw.bits, qw.group_size, qw.symmetric))


def load_quantized(folder: Path, manifest) -> Any:
    """Loader for manifest stage ``quantize`` (its row of compress.kinds): the torch-free reader
    (format.py) gives the float tensors and each layer's integers; the model gets (q - zero) * scale."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    from ..models import LoadedModel, ModelSource

    folder = Path(folder)
    qf = open_quantized(folder)
    info = qf.info
    config = AutoConfig.from_pretrained(str(folder))
    with no_init_weights():  # every weight is overwritten below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {n: torch.from_numpy(qf.array(n)) for n in qf.float_names()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    del state
    expected_missing = {f"{n}.weight" for n in qf.layers}
    if qf.tied:
        expected_missing |= {k for k in missing if k.startswith("lm_head.")}
    bad = sorted(set(missing) - expected_missing)
    if bad or unexpected:
        raise ArtifactError(f"{folder / WEIGHTS}: does not match config.json (missing {bad[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]})")
    # one copy of the model: each layer's integers are read, dequantized, put in and dropped in turn
    for qw in qf.quantized_weights():
        apply_weight(model, qw.name, torch.from_numpy(qw.dequantize()),
                     activations=qf.layers[qw.name].get("activations"))
    if qf.tied:
        model.tie_weights()
    model.eval()
    model.compress_quantization = info
    tok = AutoTokenizer.from_pretrained(str(folder))
    return LoadedModel(model, tok, ModelSource(str(folder), "hf_dir", folder), manifest.content_id,
                       {"quantization": info.get("scheme")})

