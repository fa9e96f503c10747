"""One way to name a model everywhere: a local folder, a ``.gguf`` file, a bundled name, or a hub id.

    lm = load_model("smollm2-135m")                 # bundled: fetched once into the cache
    lm = load_model("path/to/model.gguf")           # dequantized, then checked against llama.cpp
    lm = load_model("./my-hf-folder")               # safetensors; pickle refused unless allowed
    lm = load_model("HuggingFaceTB/SmolLM2-135M")   # hub id, for users who are online

:func:`resolve_model` only looks at names and paths (cheap, for ``--dry-run``); :func:`load_model`
loads weights. Artifacts of later stages (e.g. quantized models) register a loader keyed by the
stage in their manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Callable

import torch

from . import bundled as _bundled
from .checkpoints import blame_json, check_gguf, inspect_hf_folder
from .content import folder_id
from .errors import ModelLoadError
from .manifest import MANIFEST, file_digest, read_manifest

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "bundled" | "gguf" | "hf_dir" | "hub"
    path: Path | None = None


@dataclasses.dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (or a stage's wrapper of one)
    tokenizer: Any
    source: ModelSource
    model_id: str
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or s.endswith((".gguf", ".safetensors", ".json"))


def resolve_model(spec: str | Path) -> ModelSource:
    """Classify a model argument without loading anything; raise ModelLoadError for what cannot be."""
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            exported = _exported_gguf(p)
            return ModelSource(s, "gguf", exported) if exported else ModelSource(s, "hf_dir", p)
        if p.suffix == ".gguf":
            return ModelSource(s, "gguf", p)
        raise ModelLoadError(f"{s}: not a model folder or a .gguf file")
    if s in _bundled.BUNDLED:
        return ModelSource(s, "bundled")
    if _looks_like_path(s):
        raise ModelLoadError(f"{s}: path does not exist")
    if _HUB_ID.fullmatch(s):
        return ModelSource(s, "hub")
    _bundled.bundled(s)  # raises, listing the bundled names
    raise AssertionError("unreachable")


def _exported_gguf(folder: Path) -> Path | None:
    """The .gguf inside a GGUF export folder (folders are documented as accepted everywhere); an ONNX
    export is refused with what to do instead of 'no config.json'."""
    if not (folder / MANIFEST).is_file():
        return None
    m = read_manifest(folder)
    if m.stage == "export-onnx":
        raise ModelLoadError(f"{folder}: an ONNX export; PyTorch stages read the folder it was exported from "
                             f"(measure this one with: compress bench {folder})")
    if m.stage != "export-gguf":
        return None
    ggufs = [n for n in m.files if n.endswith(".gguf") and "/" not in n and not n.startswith(".")]
    if len(ggufs) != 1:
        raise ModelLoadError(f"{folder}: expected one .gguf file in the export, found {len(ggufs)}")
    return folder / ggufs[0]


# manifest stage -> loader(folder, manifest) for artifacts that are not plain HF folders
ArtifactLoader = Callable[[Path, Any], LoadedModel]
_ARTIFACT_LOADERS: dict[str, ArtifactLoader] = {}
# stage -> module that registers its loader on import (imported on demand, keeping startup light)
_STAGE_MODULES = {"quantize": "compress.quantize.artifact"}


def register_artifact_loader(stage: str, loader: ArtifactLoader) -> None:
    _ARTIFACT_LOADERS[stage] = loader


def artifact_loader(stage: str | None) -> ArtifactLoader | None:
    """The loader registered for artifacts of ``stage`` (importing the stage's module on first use), or
    None: a plain transformers folder, or a stage whose code is not installed."""
    if stage is not None and stage not in _ARTIFACT_LOADERS and stage in _STAGE_MODULES:
        import importlib

        try:
            importlib.import_module(_STAGE_MODULES[stage])
        except ImportError:  # e.g. an export-only install without the quantize stage
            return None
    return _ARTIFACT_LOADERS.get(stage) if stage is not None else None


def load_model(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
               verify: bool = True) -> LoadedModel:
    """Load any model argument as a dense transformers model plus tokenizer (fp32, eval mode)."""
    src = resolve_model(spec)
    if src.kind == "bundled":
        from .fetch import ensure_fetched

        folder = ensure_fetched(src.spec)
        lm = _load_folder(folder, src, allow_pickle=False, trust_remote_code=False, verify=verify)
        return lm
    if src.kind == "gguf":
        return _load_gguf(src, verify=verify)
    if src.kind == "hf_dir":
        return _load_folder(src.path, src, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                            verify=verify)
    return _load_hub(src, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def load_tokenizer(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Any:
    """The tokenizer alone (fast: no weights), after the same checks as :func:`load_model`."""
    from transformers import AutoTokenizer

    src = resolve_model(spec)
    if src.kind == "hf_dir":
        inspect_hf_folder(src.path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    elif src.kind == "gguf":
        check_gguf(src.path)
    if src.kind == "bundled":
        from .fetch import ensure_fetched

        return AutoTokenizer.from_pretrained(str(ensure_fetched(src.spec)))
    if src.kind == "gguf":
        return AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name)
    try:
        return AutoTokenizer.from_pretrained(str(src.path) if src.path else src.spec,
                                             trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types on a broken file
        if src.path is not None:
            blame_json(src.path)
        raise ModelLoadError(f"{src.spec}: cannot load its tokenizer ({_first_line(e)})") from None


def _load_gguf(src: ModelSource, *, verify: bool) -> LoadedModel:
    from .gguf_import import compare, load_gguf

    check_gguf(src.path)
    model, tok = load_gguf(src.path)
    _require_finite(model, src.path)
    checks = compare(model, tok, src.path) if verify else {}
    return LoadedModel(model, tok, src, "gguf:" + file_digest(src.path)[:16], checks)


def _load_folder(folder: Path, src: ModelSource, *, allow_pickle: bool, trust_remote_code: bool,
                 verify: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    loader = artifact_loader(manifest.stage) if manifest is not None else None
    if loader is not None:
        return loader(folder, manifest)
    if manifest is not None and manifest.stage in _STAGE_MODULES:
        raise ModelLoadError(f"{folder}: a {manifest.stage!r} artifact, and the code that loads it "
                             f"({_STAGE_MODULES[manifest.stage]}) cannot be imported")
    info = inspect_hf_folder(folder, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, use_safetensors=not info.pickle, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types on a broken file
        blame_json(folder)
        raise ModelLoadError(f"{folder}: transformers cannot load this folder ({_first_line(e)})") from None
    model.eval()
    _require_finite(model, folder)
    checks: dict[str, Any] = {}
    if manifest is not None and "llamacpp_perplexity" in manifest.report and verify:
        checks = _reload_check(model, folder, manifest.report)
    model_id = manifest.content_id if manifest else folder_id(folder, info.weights)
    return LoadedModel(model, tok, src, model_id, checks)


def _reload_check(model, folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A saved import is checked on every reload against llama.cpp's stored perplexity: a different
    transformers may read the same folder differently (e.g. ignore `rope_parameters`)."""
    import math

    from .gguf_import import token_nll, torch_logits, verify_against

    ids = report["check_ids"]
    ppl = float(math.exp(token_nll(torch_logits(model, ids), ids).mean()))
    verify_against(report, ppl, where=str(folder))
    return {"torch_perplexity": ppl, "llamacpp_perplexity": report["llamacpp_perplexity"]}


def _load_hub(src: ModelSource, *, allow_pickle: bool, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.spec, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(src.spec, dtype=torch.float32,
                                                     use_safetensors=None if allow_pickle else True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{src.spec}: cannot load from the hub ({_first_line(e)})") from None
    model.eval()
    return LoadedModel(model, tok, src, "hub:" + src.spec)


def _require_finite(model, where: Path) -> None:
    """A model with NaN/inf weights scores perplexity nan and exports a broken file: refused on load."""
    from .finite import nonfinite_tensors

    bad = nonfinite_tensors(model)
    if bad:
        raise ModelLoadError(f"{where}: non-finite weights in {len(bad)} tensor(s): {', '.join(bad[:8])}"
                             + (f" and {len(bad) - 8} more" if len(bad) > 8 else ""))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
