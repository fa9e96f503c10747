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

    def load(self, artifact: str | Path, profile: DeviceProfile) -> None: ...

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        """Next-token logits: float32 array (len(token_ids), vocab), or only the final ``last`` rows
        (multiple choice needs just the continuation; with a 262k vocabulary that saves most of the work)."""
        ...

    def generate(self, token_ids: Sequence[int], max_new_tokens: int) -> Generation: ...

    def version(self) -> str: ...


# name -> (module, class, pip requirement that provides the backend)
_RUNTIMES: dict[str, tuple[str, str, str]] = {
    "pytorch": ("runtimes.torch_runtime", "TorchRuntime", "torch==2.13.0"),
}


def register_runtime(name: str, module: str, cls: str, requirement: str) -> None:
    _RUNTIMES[name] = (module, cls, requirement)


def known_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """A new, unloaded runtime by name; imports its backend lazily."""
    if name not in _RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}{suggest(name, _RUNTIMES)}; known: {', '.join(known_runtimes())}")
    module, cls, requirement = _RUNTIMES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(f"runtime {name!r} needs {e.name or requirement}: pip install '{requirement}'") from None
    return getattr(mod, cls)()
