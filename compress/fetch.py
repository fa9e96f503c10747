"""``compress fetch NAME``: turn a bundled GGUF once into a cached fp32 safetensors folder.

The folder is an artifact (stage ``fetch``) whose manifest keeps llama.cpp's perplexity on the check
tokens, so every later load from the cache is verified against it in a fraction of a second.
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


def ensure_fetched(name: str) -> Path:
    """The cached folder of a bundled model, fetching it first when missing or unfinished."""
    out = cached_folder(name)
    try:
        read_manifest(out)
        return out
    except ArtifactError:
        log.info("%s is not cached yet: fetching it once", name)
        return fetch(FetchConfig(name=name))
