"""The quantized artifact on disk (layout in FORMAT.md) and its PyTorch loader.

    save_artifact(art.path, model, tokenizer, result)   # inside an ArtifactWriter (stage "quantize")
    lm = load_model("out/smollm2-int4")                 # compress.models finds load_quantized

The loader rebuilds the transformers model from config.json and puts in exactly (q - zero) * scale
for every quantized tensor, so what PyTorch evaluates is what every exporter reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError
from .core import FORMAT_VERSION, QuantResult
from .grid import Grid, QTensor
from .modules import apply_qtensor

WEIGHTS = "model.safetensors"
QUANT_JSON = "quantization.json"
_SUFFIXES = (".qweight", ".scales", ".zeros")


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


def read_quantization_json(folder: Path) -> dict[str, Any]:
    f = Path(folder) / QUANT_JSON
    if not f.is_file():
        raise ArtifactError(f"{folder}: no {QUANT_JSON} (not a quantized artifact)")
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{f}: not valid JSON ({e})") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{f}: format_version {info.get('format_version')!r}; this compress reads "
                            f"{FORMAT_VERSION}")
    return info


def load_qtensors(folder: Path, info: dict[str, Any] | None = None) -> dict[str, QTensor]:
    """The stored integers of every quantized tensor, unpacked (for tests and exporters' checks)."""
    from safetensors.torch import load_file

    info = info or read_quantization_json(folder)
    raw = load_file(str(Path(folder) / WEIGHTS))
    return {name: _qtensor(name, meta, raw) for name, meta in info["layers"].items()}


def _qtensor(name: str, meta: dict[str, Any], raw: dict[str, torch.Tensor]) -> QTensor:
    grid = Grid(int(meta["bits"]), int(meta["group_size"]), bool(meta["symmetric"]))
    if f"{name}.qweight" not in raw or f"{name}.scales" not in raw:
        raise ArtifactError(f"{WEIGHTS}: {name} is listed in {QUANT_JSON} but its qweight/scales are missing")
    qt = QTensor.from_tensors(name, raw, grid)
    if list(qt.shape) != list(meta["shape"]):
        raise ArtifactError(f"{WEIGHTS}: {name} unpacks to {list(qt.shape)}, {QUANT_JSON} says {meta['shape']}")
    return qt


def load_quantized(folder: Path, manifest) -> Any:
    """Loader for manifest stage ``quantize`` (registered with compress.models)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    from ..models import LoadedModel, ModelSource

    folder = Path(folder)
    info = read_quantization_json(folder)
    config = AutoConfig.from_pretrained(str(folder))
    with no_init_weights():  # every weight is overwritten below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    raw = load_file(str(folder / WEIGHTS))
    state = {k: v for k, v in raw.items() if not (k.endswith(_SUFFIXES) and k.rsplit(".", 1)[0] in info["layers"])}
    missing, unexpected = model.load_state_dict(state, strict=False)
    del state
    expected_missing = {f"{n}.weight" for n in info["layers"]}
    if info.get("tied"):
        expected_missing |= {k for k in missing if k.startswith("lm_head.")}
    bad = sorted(set(missing) - expected_missing)
    if bad or unexpected:
        raise ArtifactError(f"{folder / WEIGHTS}: does not match config.json (missing {bad[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]})")
    # one copy of the model: each layer's integers are unpacked, put in and dropped in turn, and the
    # file's tensors are let go as soon as they have been copied into the model
    for name, meta in info["layers"].items():
        apply_qtensor(model, name, _qtensor(name, meta, raw), activations=meta.get("activations"))
        for suffix in _SUFFIXES:
            raw.pop(f"{name}{suffix}", None)
    del raw
    if info.get("tied"):
        model.tie_weights()
    model.eval()
    model.compress_quantization = info
    tok = AutoTokenizer.from_pretrained(str(folder))
    return LoadedModel(model, tok, ModelSource(str(folder), "hf_dir", folder), manifest.content_id,
                       {"quantization": info.get("scheme")})


def _register() -> None:
    from ..models import register_artifact_loader

    register_artifact_loader("quantize", load_quantized)


_register()
