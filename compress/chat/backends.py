"""Chat backends over runtimes/: a GGUF through the llama.cpp runtime (its sampler), an ONNX export through
the onnxruntime runtime (its decoder and shared KV buffer) with our own sampling loop.

    backend = open_backend(Path("runs/demo/export-gguf-q4km"), ChatConfig(), threads=2)
    ids = backend.encode(backend.template.render(messages))
    for piece in backend.stream(ids, max_new_tokens=64):
        print(piece, end="", flush=True)
    backend.last            # TurnStats: prompt/new tokens, time to first token, decode tok/s

Both keep the cache of the previous turn and only run the new suffix of the prompt, so a chat does not
re-read its whole history every turn. Pieces are whole UTF-8 characters: a character split across
tokens is held back until complete.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from runtimes.base import common_prefix

from ..errors import ArtifactError
from ..tokenizer import generation_eos, load_export_tokenizer
from .config import ChatConfig
from .template import ChatTemplate

# end-of-turn markers of common chat templates; each one counts only if it is a single token
END_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")


@dataclasses.dataclass
class TurnStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens already in the cache from the previous turn
    new_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        dt = self.total_s - self.time_to_first_token_s
        return (self.new_tokens - 1) / dt if self.new_tokens > 1 and dt > 0 else float("nan")


def resolve_chat_artifact(path: str | Path) -> tuple[str, Path]:
    """(runtime, model file) for a .gguf file or an artifact whose kind's native runtime chat drives
    (:data:`BACKENDS`, read off the kinds table: an export kind is one row there); typed errors otherwise.

        resolve_chat_artifact("runs/demo/export-gguf-q4km")   # ("llama.cpp", .../model.Q4_K_M.gguf)
    """
    from ..kinds import KINDS
    from ..manifest import read_manifest

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return LlamaCppBackend.name, _checked_gguf(p)
    if p.is_file():
        raise ArtifactError(f"{p}: not a .gguf file or an export artifact directory")
    m = read_manifest(p)  # missing, unfinished and truncated artifacts fail here
    kind = KINDS.get(m.stage)
    backend = BACKENDS.get(kind.native) if kind is not None else None
    if backend is None:
        formats = "|".join(k.export_format for k in KINDS.values() if k.export_format and k.native in BACKENDS)
        raise ArtifactError(f"{p}: a {m.stage!r} artifact cannot chat; export it first "
                            f"(compress export {p} --format {formats} --out DIR)")
    return backend.name, backend.model_file(p, m)


def _checked_gguf(f: Path) -> Path:
    from ..checkpoints import check_gguf
    from ..errors import ModelLoadError

    try:
        check_gguf(f)  # truncation, and metadata llama.cpp would drop (the chat template with it)
    except ModelLoadError as e:
        raise ArtifactError(str(e)) from None
    return f


def open_backend(path: str | Path, cfg: ChatConfig, *, threads: int):
    runtime, model_file = resolve_chat_artifact(path)
    return BACKENDS[runtime](model_file, cfg, threads)


def model_bytes(path: str | Path) -> int:
    """Bytes of the weights the backend maps (the .gguf, or model.onnx plus external data)."""
    _, f = resolve_chat_artifact(path)
    data = f.with_name(f.name + ".data")
    return f.stat().st_size + (data.stat().st_size if data.exists() else 0)


class LlamaCppBackend:
    """Chat over :class:`runtimes.llama_cpp_runtime.LlamaCppRuntime`: the GGUF's template, its stop tokens and
    whole-character text pieces; loading, tokenizing and sampling are the runtime's."""

    name = "llama.cpp"

    @staticmethod
    def model_file(folder: Path, manifest: Any) -> Path:
        """The one .gguf an artifact of a kind llama.cpp runs natively lists in its manifest, checked."""
        ggufs = [n for n in manifest.files if n.endswith(".gguf") and not n.startswith(".")]
        if len(ggufs) != 1:
            raise ArtifactError(f"{folder}: expected one .gguf file in the export, found {len(ggufs)}")
        return _checked_gguf(folder / ggufs[0])

    def __init__(self, gguf: Path, cfg: ChatConfig, threads: int) -> None:
        from runtimes import DeviceProfile
        from runtimes.llama_cpp_runtime import LlamaCppRuntime

        self.cfg, self.path = cfg, gguf
        self.runtime = rt = LlamaCppRuntime()
        rt.load(gguf, DeviceProfile(threads=threads), n_ctx=cfg.context, logits_all=False, seed=cfg.seed)
        md = rt.metadata
        self.context_length = rt.context_length()
        self.add_bos = md.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.stop_ids = rt.end_ids()
        for marker in END_MARKERS:
            ids = rt.tokenize(marker)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
        self.bos_id, eos_id = rt.special_ids()
        self.bos_text = self._text(self.bos_id)
        self.template = ChatTemplate(md.get("tokenizer.chat_template"), bos_token=self.bos_text,
                                     eos_token=self._text(eos_id), where=str(gguf))
        self.last = TurnStats()

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.runtime.token_bytes([token], special=True).decode("utf-8", "replace")

    def encode(self, prompt: str) -> list[int]:
        # the template writes its own special tokens; BOS only where the model wants one and it is missing
        ids = self.runtime.tokenize(prompt)
        if self.add_bos and not prompt.startswith(self.bos_text or "\0") and self.bos_id >= 0:
            ids = [self.bos_id] + ids
        return ids

    def reset(self) -> None:
        self.runtime.reset()

    def stream(self, ids: Sequence[int], max_new_tokens: int) -> Iterator[str]:
        cfg, rt = self.cfg, self.runtime
        self.last = stats = TurnStats(prompt_tokens=len(ids), reused_tokens=rt.cached_prefix(ids))
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        t0 = time.perf_counter()
        gen = rt.sample(ids, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        try:
            for tok in gen:
                if stats.new_tokens == 0:
                    stats.time_to_first_token_s = time.perf_counter() - t0
                if tok in self.stop_ids:
                    break
                stats.new_tokens += 1
                piece = utf8.decode(rt.token_bytes([tok]))
                if piece:
                    yield piece
                if stats.new_tokens >= max_new_tokens:
                    break
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            gen.close()
            stats.total_s = time.perf_counter() - t0


class OnnxBackend:
    """Chat over :class:`runtimes.onnx_runtime.OnnxRuntime` with our own sampling loop. An export that declares
    the shared KV buffer gets one of ``context_length`` positions for the whole chat: each turn truncates it to
    the prefix it shares with the previous one and feeds the rest. An older export runs the runtime's growing
    cache, which cannot be cut back: a turn that does not extend the previous one starts over."""

    name = "onnxruntime"

    @staticmethod
    def model_file(folder: Path, manifest: Any) -> Path:
        """The graph an artifact of a kind onnxruntime runs natively names in its report."""
        return folder / manifest.report.get("model_file", "model.onnx")

    def __init__(self, model_file: Path, cfg: ChatConfig, threads: int) -> None:
        from runtimes import DeviceProfile
        from runtimes.onnx_runtime import OnnxRuntime

        from ..errors import CompressError

        folder = model_file.parent
        self.cfg, self.path = cfg, model_file
        self.runtime = rt = OnnxRuntime()
        try:
            rt.load(folder, DeviceProfile(threads=threads), n_ctx=cfg.context, model_file=model_file.name,
                    tokenizer=False)  # the chat reads tokenizer.json itself, without transformers
        except CompressError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise ArtifactError(f"{model_file}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.decoder = rt.decoder
        self.tokenizer = load_export_tokenizer(folder)
        max_length = rt.manifest.report.get("max_length")
        self.context_length = min(cfg.context, max_length or cfg.context)
        tok = self.tokenizer
        self.stop_ids = {t for t in [tok.eos_token_id, *generation_eos(folder)] if t is not None}
        self.stop_ids.update(t for t in map(tok.token_id, END_MARKERS) if t is not None and t != tok.unk_token_id)
        self.bos_text = tok.bos_token or ""
        self.add_bos = tok.adds_bos
        self.template = ChatTemplate(tok.chat_template, bos_token=self.bos_text, eos_token=tok.eos_token or "",
                                     where=str(folder))
        self.rng = np.random.default_rng(cfg.seed)
        self._fed: list[int] = []  # token ids whose keys/values are in the cache
        self._past: dict[str, Any] | None = None  # the growing cache (exports without the shared buffer)
        # the shared KV buffer, allocated once for the whole chat (None: an export without the declaration)
        self.cache = self.decoder.new_cache(self.context_length) if self.decoder.shares_buffer else None
        self.last = TurnStats()

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)  # BOS below, unless the template wrote it
        if self.add_bos and not prompt.startswith(self.bos_text or "\0"):
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def reset(self) -> None:
        self._fed, self._past = [], None
        if self.cache is not None:
            self.cache.truncate(0)

    def _next(self, logits: np.ndarray) -> int:
        cfg = self.cfg
        if cfg.temperature == 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / cfg.temperature
        top = np.argpartition(-z, min(cfg.top_k, len(z)) - 1)[:cfg.top_k]
        top = top[np.argsort(-z[top])]
        p = np.exp(z[top] - z[top].max())
        p /= p.sum()
        keep = max(1, int(np.searchsorted(np.cumsum(p), cfg.top_p) + 1))
        p = p[:keep] / p[:keep].sum()
        return int(self.rng.choice(top[:keep], p=p))

    def _feed(self, ids: list[int]) -> np.ndarray:
        """Run ``ids`` after the ``len(self._fed)`` cached positions: the last position's logits."""
        if self.cache is not None:
            row = self.cache.feed(ids)
        else:
            logits, self._past = self.decoder.run(ids, self._past, len(self._fed), 1)
            row = logits[-1]
        self._fed = self._fed + ids
        return row

    def stream(self, ids: Sequence[int], max_new_tokens: int) -> Iterator[str]:
        ids = list(ids)
        reuse = common_prefix(self._fed, ids)
        if self.cache is not None:
            reuse = min(reuse, len(ids) - 1)  # the last prompt token is fed again for its logits
            self._fed = self._fed[:reuse]
            self.cache.truncate(reuse)
        elif reuse < len(self._fed) or reuse == len(ids):  # the growing cache cannot be cut back: start over
            self.reset()
            reuse = 0
        self.last = stats = TurnStats(prompt_tokens=len(ids), reused_tokens=reuse)
        t0 = time.perf_counter()
        new: list[int] = []
        shown = ""
        try:
            logits = self._feed(ids[reuse:])
            stats.time_to_first_token_s = time.perf_counter() - t0
            while True:
                tok = self._next(logits)
                if tok in self.stop_ids:
                    break
                new.append(tok)
                stats.new_tokens = len(new)
                # decode the whole answer so far: byte-level pieces of one character decode as U+FFFD
                # until the character is complete, so hold those back
                text = self.tokenizer.decode(new)
                if not text.endswith("\ufffd") and len(text) > len(shown) and text.startswith(shown):
                    yield text[len(shown):]
                    shown = text
                if len(new) >= max_new_tokens or len(self._fed) + 1 >= self.context_length:
                    break
                logits = self._feed([tok])
            text = self.tokenizer.decode(new)
            if len(text) > len(shown) and text.startswith(shown):
                yield text[len(shown):]
        except BaseException:
            self.reset()  # Ctrl-C may land between the cache update and its token list: start clean
            raise
        finally:
            stats.total_s = time.perf_counter() - t0


# native runtime (a kinds-table row's first ``runs``) -> the chat backend over it; a kind whose native runtime
# is here chats with no change in this module
BACKENDS: dict[str, type] = {b.name: b for b in (LlamaCppBackend, OnnxBackend)}
