"""``compress fetch NAME``: turn a bundled GGUF once into a cached fp32 safetensors folder.

The folder is an artifact (stage ``fetch``) whose manifest keeps llama.cpp's perplexity on the check
tokens, so every later load from the cache is verified against it in a fraction of a second.

:func:`import_gguf` does the same for any ``.gguf`` file (stage ``import-gguf``), content-addressed by the
file's digest: the exporters read a GGUF input through that folder.

    folder = import_gguf(Path("model.Q4_K_M.gguf"))   # ~/.cache/compress/imports/gguf-<digest>
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .bundled import BUNDLED, bundled, bundled_gguf, cache_root
from .config import StageConfig, register_config
from .errors import ArtifactError, ConfigError
from .manifest import ArtifactWriter, file_digest, read_manifest
from .progress import steps

log = logging.getLogger(__name__)


@register_config("fetch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FetchConfig(StageConfig):
    name: str = "smollm2-135m"
    check_tokens: int = 128
    tolerance: float = 0.03

    def validate(self) -> None:
        if self.name not in BUNDLED:
            bundled(self.name)  # raises with the known names
        if self.check_tokens < 16:
            raise ConfigError(f"fetch.check_tokens: {self.check_tokens} is too few (>= 16)")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"fetch.tolerance: {self.tolerance} must be in (0, 1)")


def cached_folder(name: str) -> Path:
    return cache_root() / "models" / name


def fetch(cfg: FetchConfig, *, force: bool = False) -> Path:
    """Import the bundled GGUF, check it against llama.cpp, save it; skip when already cached."""
    from .gguf_import import compare, load_gguf

    out = cached_folder(cfg.name)
    with steps(f"fetch {cfg.name}", 4) as step:
        step("locating the bundled GGUF")
        gguf = bundled_gguf(cfg.name)
        input_id = "gguf:" + file_digest(gguf)[:16]
        try:
            m = read_manifest(out)
            if m.input_id == input_id and m.config == cfg.to_dict() and not force:
                log.info("%s is already cached in %s", cfg.name, out)
                return out
        except ArtifactError:
            pass
        with ArtifactWriter(out, stage="fetch", config=cfg, input_id=input_id, force=True, inputs=[gguf]) as art:
            step("dequantizing the GGUF into transformers")
            model, tok = load_gguf(gguf)
            step("checking against llama.cpp on the same tokens")
            art.report.update(compare(model, tok, gguf, n_tokens=cfg.check_tokens, tolerance=cfg.tolerance))
            art.report["source_gguf"] = gguf.name
            step("saving fp32 safetensors")
            model.save_pretrained(art.path)
            tok.save_pretrained(art.path)
    return out


@register_config("import-gguf")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportConfig(StageConfig):
    check_tokens: int = 128
    tolerance: float = 0.03

    def validate(self) -> None:
        FetchConfig(check_tokens=self.check_tokens, tolerance=self.tolerance)  # the same limits


def import_gguf(gguf: Path, cfg: ImportConfig | None = None, *, force: bool = False) -> Path:
    """A ``.gguf`` file as a cached fp32 safetensors folder, dequantized and checked against llama.cpp on
    the same tokens (the manifest keeps llama.cpp's figure, so every reload is checked too). Keyed by the
    file's sha256: a file imported once (or a bundled model's own GGUF, already fetched) is not imported
    again, and an edited file is a new import.

    >>> import_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    PosixPath('/home/me/.cache/compress/models/smollm2-135m')
    """
    from .checkpoints import check_gguf
    from .finite import nonfinite_tensors
    from .gguf_import import compare, load_gguf

    cfg = cfg or ImportConfig()
    gguf = Path(gguf).expanduser().absolute()
    input_id = "gguf:" + file_digest(gguf)[:16]
    earlier = None if force else _imported(input_id, cfg)
    if earlier is not None:
        return earlier
    out = cache_root() / "imports" / input_id.replace(":", "-")
    check_gguf(gguf)
    with steps(f"import {gguf.name}", 3) as step, \
            ArtifactWriter(out, stage="import-gguf", config=cfg, input_id=input_id, force=True, inputs=[gguf]) as art:
        step("dequantizing the GGUF into transformers")
        model, tok = load_gguf(gguf)
        bad = nonfinite_tensors(model)
        if bad:
            raise ArtifactError(f"{gguf}: non-finite weights in {len(bad)} tensor(s): {', '.join(bad[:8])}")
        step("checking against llama.cpp on the same tokens")
        art.report.update(compare(model, tok, gguf, n_tokens=cfg.check_tokens, tolerance=cfg.tolerance))
        art.report["source_gguf"] = str(gguf)
        step("saving fp32 safetensors")
        model.save_pretrained(art.path)
        tok.save_pretrained(art.path)
    log.info("imported %s into %s", gguf, out)
    return out


def imported_folder(gguf: Path) -> Path | None:
    """The cached import of a ``.gguf`` file if there is one (nothing is imported)."""
    return _imported("gguf:" + file_digest(Path(gguf).expanduser())[:16], ImportConfig())


def _imported(input_id: str, cfg: ImportConfig) -> Path | None:
    for name in BUNDLED:  # the bundled model's fetch is this very import
        try:
            if read_manifest(cached_folder(name)).input_id == input_id:
                return cached_folder(name)
        except ArtifactError:
            pass
    out = cache_root() / "imports" / input_id.replace(":", "-")
    try:
        m = read_manifest(out)
        if m.input_id == input_id and m.config == cfg.to_dict():
            return out
    except ArtifactError:
        pass
    return None


def ensure_fetched(name: str) -> Path:
    """The cached folder of a bundled model, fetching it first when missing or unfinished."""
    out = cached_folder(name)
    try:
        read_manifest(out)
        return out
    except ArtifactError:
        log.info("%s is not cached yet: fetching it once", name)
        return fetch(FetchConfig(name=name))
