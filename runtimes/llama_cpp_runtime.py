"""llama.cpp runtime (llama-cpp-python): runs ``export-gguf`` artifacts and plain ``.gguf`` files.

    rt = get_runtime("llama.cpp")
    rt.load("out/smollm2-q4_0", DeviceProfile(threads=2))     # or "model.Q4_0.gguf"
    rt.logits([1, 2, 3])                                      # (3, vocab) float32, one eval
    gen = rt.generate([1, 2, 3], max_new_tokens=128)          # greedy, KV cache, timed

Token ids go in as they are (the caller tokenizes with the reference tokenizer), so every runtime
sees exactly the same ids. The KV cache is cleared before every call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import ArtifactError, MissingBackendError

from .base import DeviceProfile, Generation, usable_threads
from .sizes import gguf_kv_bytes_per_position, gguf_weight_bytes

STAGE = "export-gguf"
INSTALL = "pip install llama-cpp-python"
DEFAULT_CTX = 1024


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingBackendError(f"runtime 'llama.cpp' needs llama-cpp-python: {INSTALL}") from None
    return llama_cpp


def gguf_path(artifact: str | Path) -> Path:
    """The .gguf file of an ``export-gguf`` artifact directory, or ``artifact`` itself if it is a .gguf."""
    p = Path(artifact)
    if p.is_file():
        if p.suffix != ".gguf":
            raise ArtifactError(f"{p}: not a .gguf file; llama.cpp loads GGUF exports")
        return p
    from compress.manifest import read_manifest

    m = read_manifest(p)
    if m.stage != STAGE:
        raise ArtifactError(f"{p}: a {m.stage!r} artifact, not a GGUF export ({STAGE!r}); "
                            "export it first: compress export ARTIFACT --format gguf")
    f = p / m.report.get("gguf_file", "")
    if not f.is_file():
        raise ArtifactError(f"{p}: the manifest names {m.report.get('gguf_file')!r} but it is missing")
    return f


class LlamaCppRuntime:
    name = "llama.cpp"

    def __init__(self) -> None:
        self.llm: Any = None
        self.path: Path | None = None
        self.tokenizer: Any = None  # llama.cpp tokenizes itself (self.llm.tokenize); the harness passes ids

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None,
             verify: bool = True) -> None:
        """Open the GGUF with ``profile.threads`` threads and a context of ``n_ctx`` positions (default
        1024, capped at the model's training context). Every position's logits are kept (``logits_all``)
        so that :meth:`logits` can score a whole window in one eval. No load-time checks (``verify``)."""
        llama_cpp = _llama_cpp()
        self.path = gguf_path(artifact)
        n_ctx = n_ctx or DEFAULT_CTX
        # llama.cpp evaluates at most n_batch tokens per decode call: one call per window keeps the
        # arithmetic the same as a single forward pass elsewhere
        self.llm = llama_cpp.Llama(model_path=str(self.path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                                   n_threads=usable_threads(profile.threads),
                                   n_threads_batch=usable_threads(profile.threads), verbose=False)

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        ids = list(token_ids)
        self._check_len(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        rows = self.llm.scores[: len(ids)]
        return np.array(rows[-last:] if last else rows, dtype=np.float32)

    def generate(self, token_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> Generation:
        """Greedy decoding; the first token comes out of the prompt's eval (time to first token)."""
        llama_cpp = _llama_cpp()
        ids = list(token_ids)
        self._check_len(len(ids) + max_new_tokens)
        llm = self.llm
        vocab = llm.n_vocab()
        # only the last position's logits during generation: keeping every row would compute the
        # vocabulary projection for the whole prompt, which no generating application pays for
        keep_all = llm._logits_all
        llm._logits_all = False
        try:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            nxt = self._argmax_last(llama_cpp, vocab)
            ttft = time.perf_counter() - t0
            new = [nxt]
            while len(new) < max_new_tokens and nxt not in stop_ids:
                llm.eval([nxt])
                nxt = self._argmax_last(llama_cpp, vocab)
                new.append(nxt)
            total = time.perf_counter() - t0
        finally:
            llm._logits_all = keep_all
        return Generation(ids, new, ttft, total)

    def _argmax_last(self, llama_cpp, vocab: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(vocab,)).argmax())

    def _check_len(self, n: int) -> None:
        from compress.errors import ConfigError

        limit = len(self.llm.input_ids)  # the Python-side token buffer: what eval can actually hold
        if n > limit:
            raise ConfigError(f"sequence of {n} tokens is longer than the llama.cpp context ({limit}); "
                              "load with a larger n_ctx")

    def version(self) -> str:
        return _llama_cpp().__version__

    def weight_bytes(self) -> float:
        return gguf_weight_bytes(self.path)

    def kv_bytes_per_position(self) -> float:
        return gguf_kv_bytes_per_position(self.path)
