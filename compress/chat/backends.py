"""Chat backends: a GGUF through llama.cpp, an ONNX export through onnxruntime with our own KV-cache loop.

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

from runtimes.base import usable_threads

from ..errors import ArtifactError, MissingBackendError
from .config import ChatConfig
from .template import ChatTemplate
from .tokenizer import generation_eos, load_export_tokenizer

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
    """("gguf" | "onnx", model file) for a .gguf file or an export artifact; typed errors otherwise."""
    from ..manifest import read_manifest

    from ..checkpoints import check_gguf
    from ..errors import ModelLoadError

    def checked(f: Path) -> tuple[str, Path]:
        try:
            check_gguf(f)  # truncation, and metadata llama.cpp would drop (the chat template with it)
        except ModelLoadError as e:
            raise ArtifactError(str(e)) from None
        return "gguf", f

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return checked(p)
    if p.is_file():
        raise ArtifactError(f"{p}: not a .gguf file or an export artifact directory")
    m = read_manifest(p)  # missing, unfinished and truncated artifacts fail here
    if m.stage == "export-gguf":
        ggufs = [n for n in m.files if n.endswith(".gguf") and not n.startswith(".")]
        if len(ggufs) != 1:
            raise ArtifactError(f"{p}: expected one .gguf file in the export, found {len(ggufs)}")
        return checked(p / ggufs[0])
    if m.stage == "export-onnx":
        return "onnx", p / m.report.get("model_file", "model.onnx")
    raise ArtifactError(f"{p}: a {m.stage!r} artifact cannot chat; export it first "
                        f"(compress export {p} --format gguf|onnx --out DIR)")


def open_backend(path: str | Path, cfg: ChatConfig, *, threads: int):
    kind, model_file = resolve_chat_artifact(path)
    return LlamaCppBackend(model_file, cfg, threads) if kind == "gguf" else OnnxBackend(model_file, cfg, threads)


def model_bytes(path: str | Path) -> int:
    """Bytes of the weights the backend maps (the .gguf, or model.onnx plus external data)."""
    _, f = resolve_chat_artifact(path)
    data = f.with_name(f.name + ".data")
    return f.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, gguf: Path, cfg: ChatConfig, threads: int) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise MissingBackendError("chat on a GGUF needs llama.cpp: pip install llama-cpp-python") from None
        from runtimes.quiet import captured_output

        self.cfg, self.path = cfg, gguf
        try:
            with captured_output() as text:
                n = usable_threads(threads)
                self.llm = llama_cpp.Llama(str(gguf), n_ctx=cfg.context, n_threads=n, n_threads_batch=n,
                                           seed=cfg.seed, verbose=False)
        except (ValueError, RuntimeError) as e:
            lines = [ln for ln in text().splitlines() if "error" in ln.lower()] or [str(e)]
            raise ArtifactError(f"{gguf}: llama.cpp cannot load it ({lines[-1].strip()})") from None
        md = self.llm.metadata
        arch = md.get("general.architecture", "")
        trained = int(md.get(f"{arch}.context_length", cfg.context))
        self.context_length = min(self.llm.n_ctx(), trained)
        self.add_bos = md.get("tokenizer.ggml.add_bos_token", "false") == "true"
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.stop_ids = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self.stop_ids.add(self.llm.token_eos())
        for marker in END_MARKERS:
            ids = self.llm.tokenize(marker.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
        self.bos_text = self._text(self.llm.token_bos())
        self.template = ChatTemplate(md.get("tokenizer.chat_template"), bos_token=self.bos_text,
                                     eos_token=self._text(self.llm.token_eos()), where=str(gguf))
        self.last = TurnStats()

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def encode(self, prompt: str) -> list[int]:
        # the template writes its own special tokens; BOS only where the model wants one and it is missing
        ids = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        if self.add_bos and not prompt.startswith(self.bos_text or "\0") and self.llm.token_bos() >= 0:
            ids = [self.llm.token_bos()] + ids
        return ids

    def reset(self) -> None:
        self.llm.reset()

    def stream(self, ids: Sequence[int], max_new_tokens: int) -> Iterator[str]:
        cfg = self.cfg
        # llama-cpp-python keeps the evaluated ids in _input_ids; generate() below reuses that prefix
        self.last = stats = TurnStats(prompt_tokens=len(ids),
                                      reused_tokens=_common_prefix(list(self.llm._input_ids), ids))
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        t0 = time.perf_counter()
        # generate() reuses the longest cached prefix of ids and evaluates only the rest
        gen = self.llm.generate(list(ids), temp=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=0.0,
                                repeat_penalty=1.0, reset=True)
        try:
            for tok in gen:
                if stats.new_tokens == 0:
                    stats.time_to_first_token_s = time.perf_counter() - t0
                if tok in self.stop_ids:
                    break
                stats.new_tokens += 1
                piece = utf8.decode(self.llm.detokenize([tok]))
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
    name = "onnxruntime"

    def __init__(self, model_file: Path, cfg: ChatConfig, threads: int) -> None:
        from runtimes.onnx_runtime import OnnxDecoder, make_session

        from ..manifest import read_manifest

        folder = model_file.parent
        manifest = read_manifest(folder)
        if not model_file.is_file():
            raise ArtifactError(f"{model_file}: missing from the ONNX export")
        self.cfg, self.path = cfg, model_file
        self.tokenizer = load_export_tokenizer(folder)
        try:
            session = make_session(model_file, threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise ArtifactError(f"{model_file}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.decoder = OnnxDecoder(session, manifest.report.get("max_length"))
        self.context_length = min(cfg.context, manifest.report.get("max_length") or cfg.context)
        tok = self.tokenizer
        self.stop_ids = {t for t in [tok.eos_token_id, *generation_eos(folder)] if t is not None}
        self.stop_ids.update(t for t in map(tok.token_id, END_MARKERS) if t is not None and t != tok.unk_token_id)
        self.bos_text = tok.bos_token or ""
        self.add_bos = tok.adds_bos
        self.template = ChatTemplate(tok.chat_template, bos_token=self.bos_text, eos_token=tok.eos_token or "",
                                     where=str(folder))
        self.rng = np.random.default_rng(cfg.seed)
        self._fed: list[int] = []  # token ids whose keys/values are in self._past
        self._past: dict[str, Any] | None = None
        self.last = TurnStats()

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if self.add_bos and not prompt.startswith(self.bos_text or "\0"):
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def reset(self) -> None:
        self._fed, self._past = [], None

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

    def stream(self, ids: Sequence[int], max_new_tokens: int) -> Iterator[str]:
        ids = list(ids)
        reuse = _common_prefix(self._fed, ids)
        if reuse < len(self._fed) or reuse == len(ids):  # the cache cannot be cut back cheaply: start over
            self.reset()
            reuse = 0
        self.last = stats = TurnStats(prompt_tokens=len(ids), reused_tokens=reuse)
        t0 = time.perf_counter()
        new: list[int] = []
        shown = ""
        try:
            logits, self._past = self.decoder.run(ids[reuse:], self._past, reuse, 1)
            self._fed = ids
            stats.time_to_first_token_s = time.perf_counter() - t0
            while True:
                tok = self._next(logits[-1])
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
                logits, self._past = self.decoder.run([tok], self._past, len(self._fed), 1)
                self._fed = self._fed + [tok]
            text = self.tokenizer.decode(new)
            if len(text) > len(shown) and text.startswith(shown):
                yield text[len(shown):]
        except BaseException:
            self.reset()  # Ctrl-C may land between the cache update and its token list: start clean
            raise
        finally:
            stats.total_s = time.perf_counter() - t0
