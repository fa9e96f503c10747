"""The Runtime protocol, device profiles and the runtime registry."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from compress.config import suggest
from compress.errors import ConfigError, MissingBackendError


_SAID: set[tuple[int, int]] = set()


def usable_threads(requested: int) -> int:
    """``requested`` clamped to this machine's cores, said once per process when it changes anything.

    Every runtime asks here before it starts a thread pool: `--threads 100000` made llama.cpp segfault
    and onnxruntime start threads until the machine stopped answering (load average 538)."""
    cores = os.cpu_count() or 1
    n = max(1, int(requested))
    if n <= cores:
        return n
    if (n, cores) not in _SAID:
        _SAID.add((n, cores))
        logging.getLogger("compress").warning("%d threads asked for; this machine has %d cores, using %d",
                                              n, cores, cores)
    return cores


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share (a KV cache of ``a`` serves that much of ``b``)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Where a model runs: thread count and budgets (MB). ``None`` budgets are unlimited."""

    name: str = "laptop"
    threads: int = 2
    memory_budget_mb: float | None = None
    storage_budget_mb: float | None = None
    preferred_runtime: str = "pytorch"


@dataclasses.dataclass
class Generation:
    """Greedy generation result with its timings (seconds) and speeds (tokens/s)."""

    prompt_ids: list[int]
    new_ids: list[int]
    time_to_first_token_s: float
    total_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.new_ids) - 1  # the first new token comes out of prefill
        dt = self.total_s - self.time_to_first_token_s
        return n / dt if n > 0 and dt > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        t = self.time_to_first_token_s
        return len(self.prompt_ids) / t if t > 0 else float("nan")


@runtime_checkable
class Runtime(Protocol):
    name: str

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None,
             verify: bool = True) -> None:
        """Load ``artifact`` with ``profile.threads`` threads. ``n_ctx``: the longest sequence the caller will
        run (llama.cpp sizes its context by it; an ONNX export's length was fixed when it was exported).
        ``verify``: run the checks that compare what was loaded with a stored reference (PyTorch re-checks a
        GGUF import against llama.cpp's perplexity); a latency run turns them off so that its load time and
        memory are the weights' alone. Runtimes without such checks ignore it."""
        ...

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        """Next-token logits: float32 array (len(token_ids), vocab), or only the final ``last`` rows
        (multiple choice needs just the continuation; with a 262k vocabulary that saves most of the work)."""
        ...

    def generate(self, token_ids: Sequence[int], max_new_tokens: int) -> Generation: ...

    def version(self) -> str: ...

    def weight_bytes(self) -> float:
        """Bytes of weights one decode step reads, at their stored precision (an untied embedding table
        counts one row). Parses the model file when asked: call it after any memory reading."""
        ...

    def kv_bytes_per_position(self) -> float:
        """Bytes the KV cache grows by per position (K and V of every layer, at the cache's dtype)."""
        ...


# name -> (module, class, pip requirement that provides the backend, the backend's own modules)
_RUNTIMES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "pytorch": ("runtimes.torch_runtime", "TorchRuntime", "torch==2.13.0", ("torch", "transformers", "compress.models")),
}


def register_runtime(name: str, module: str, cls: str, requirement: str, imports: tuple[str, ...] = ()) -> None:
    """``imports``: the modules the runtime's backend loads lazily (see :func:`import_backend`)."""
    _RUNTIMES[name] = (module, cls, requirement, tuple(imports))


def _entry(name: str) -> tuple[str, str, str, tuple[str, ...]]:
    if name not in _RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}{suggest(name, _RUNTIMES)}; known: {', '.join(known_runtimes())}")
    return _RUNTIMES[name]


def import_backend(name: str) -> None:
    """Import runtime ``name``'s backend now: a timed load then measures reading weights, not Python imports."""
    for mod in _entry(name)[3]:
        importlib.import_module(mod)


def known_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """A new, unloaded runtime by name; imports its backend lazily."""
    module, cls, requirement, _ = _entry(name)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(f"runtime {name!r} needs {e.name or requirement}: pip install '{requirement}'") from None
    return getattr(mod, cls)()
