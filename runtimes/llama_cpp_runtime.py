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
from typing import Any, Iterator, Sequence

import numpy as np

from compress.errors import ArtifactError, optional_import

from .base import DeviceProfile, Generation, common_prefix, usable_threads
from .quiet import captured_output
from .sizes import gguf_kv_bytes_per_position, gguf_weight_bytes

STAGE = "export-gguf"
DEFAULT_CTX = 1024
GENERATE_BATCH = 512  # llama-cpp-python's default n_batch


def _llama_cpp():
    return optional_import("llama_cpp", "runtime 'llama.cpp' needs llama-cpp-python", "llama-cpp-python")


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

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None, verify: bool = True,
             logits_all: bool = True, seed: int | None = None) -> None:
        """Open the GGUF with ``profile.threads`` threads and a context of ``n_ctx`` positions (default
        1024, capped at the model's training context). Every position's logits are kept (``logits_all``)
        so that :meth:`logits` can score a whole window in one eval; a generating application (chat) passes
        ``logits_all=False`` and ``seed`` for its sampler. No load-time checks (``verify``). A file llama.cpp
        refuses is an ArtifactError quoting llama.cpp's own last error line."""
        llama_cpp = _llama_cpp()
        self.path = gguf_path(artifact)
        n_ctx = n_ctx or DEFAULT_CTX
        threads = usable_threads(profile.threads)
        # llama.cpp evaluates at most n_batch tokens per decode call: one call per window keeps the
        # arithmetic the same as a single forward pass elsewhere; generation alone keeps llama.cpp's default
        extra = {} if seed is None else {"seed": seed}
        with captured_output() as chatter:
            try:
                self.llm = llama_cpp.Llama(model_path=str(self.path), logits_all=logits_all, n_ctx=n_ctx,
                                           n_batch=n_ctx if logits_all else GENERATE_BATCH, n_threads=threads,
                                           n_threads_batch=threads, verbose=False, **extra)
                failed = None
            except (ValueError, RuntimeError) as e:  # llama-cpp-python's "Failed to load model from file"
                failed = e
        if failed is not None:
            lines = [ln for ln in chatter().splitlines() if "error" in ln.lower()] or [str(failed)]
            raise ArtifactError(f"{self.path}: llama.cpp cannot load it ({lines[-1].strip()})") from None

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

    # --- generation as an application does it (compress chat): llama.cpp's sampler, the cache kept ---

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF's metadata as llama.cpp read it (chat template, special-token flags, context length)."""
        return self.llm.metadata

    def context_length(self) -> int:
        """Positions this context holds: ``n_ctx``, or the model's training context when that is shorter."""
        md = self.llm.metadata
        arch = md.get("general.architecture", "")
        return min(self.llm.n_ctx(), int(md.get(f"{arch}.context_length", self.llm.n_ctx())))

    def end_ids(self) -> set[int]:
        """Every end-of-generation token of the vocabulary (llama.cpp's own list), and the EOS token."""
        llama_cpp = _llama_cpp()
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        ids = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        ids.add(self.llm.token_eos())
        return ids

    def special_ids(self) -> tuple[int, int]:
        """(BOS, EOS) token ids; -1 where the vocabulary has none."""
        return self.llm.token_bos(), self.llm.token_eos()

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenization of ``text``, special tokens parsed, no BOS added."""
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def token_bytes(self, ids: Sequence[int], *, special: bool = False) -> bytes:
        return self.llm.detokenize(list(ids), special=special)

    def cached_prefix(self, token_ids: Sequence[int]) -> int:
        """How many leading ``token_ids`` are already in the KV cache (what :meth:`sample` will not run again)."""
        return common_prefix(self.llm._input_ids, token_ids)

    def sample(self, token_ids: Sequence[int], *, temperature: float, top_k: int, top_p: float) -> Iterator[int]:
        """Token ids sampled one at a time after ``token_ids`` (greedy at temperature 0), reusing the cached
        prefix and evaluating only the rest; the caller stops it (close the generator)."""
        return self.llm.generate(list(token_ids), temp=temperature, top_k=top_k, top_p=top_p, min_p=0.0,
                                 repeat_penalty=1.0, reset=True)

    def reset(self) -> None:
        """Forget the KV cache."""
        self.llm.reset()

    def version(self) -> str:
        return _llama_cpp().__version__

    def weight_bytes(self) -> float:
        return gguf_weight_bytes(self.path)

    def kv_bytes_per_position(self) -> float:
        return gguf_kv_bytes_per_position(self.path)
