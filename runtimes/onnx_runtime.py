"""onnxruntime runtime: runs an ``export-onnx`` artifact with our own greedy KV-cache loop.

    rt = get_runtime("onnxruntime")
    rt.load("out/smollm2-onnx-int4", DeviceProfile(threads=2))
    rt.logits([1, 2, 3])                          # (3, vocab) float32, one prefill pass
    gen = rt.generate([1, 2, 3], max_new_tokens=128)
    gen.decode_tokens_per_s

The loop keeps the KV cache inside onnxruntime and asks the graph for the last position's logits only
(``logits_to_keep``), so decode pays for one vocabulary row. A graph whose export declares it (every export
since the shared buffer, :mod:`runtimes.onnx_kv`) gets one fixed-size buffer per generation, bound as both
``past_key_values.*`` and ``present.*``, that GroupQueryAttention writes in place; an older or foreign graph
runs the growing path: each step's ``present.*`` OrtValues are fed back as the next step's
``past_key_values.*`` through ``run_with_ort_values`` (never copied through numpy, but reallocated and copied
whole by the kernel at every step). ``decoder.shares_buffer`` says which.

A prompt longer than ``prefill_chunk`` tokens (:data:`runtimes.onnx_kv.PREFILL_CHUNK`, 256) is fed in consecutive
runs of that many, each after the keys and values the runs before it wrote: on either KV path, and in ``logits``,
whose rows are the runs' rows concatenated. The tokenizer is read from tokenizer.json without transformers or
torch, and only when first asked for (:attr:`OnnxRuntime.tokenizer`).

A folder onnxruntime-genai's model builder wrote (no manifest; ``genai_config.json``, :mod:`runtimes.genai_folder`)
loads too where its graph takes only the inputs this loop feeds: the same file in both loops.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import ArtifactError, ConfigError, optional_import
from compress.tokenizer import load_export_tokenizer

from .base import DeviceProfile, Generation, usable_threads
from .genai_folder import GENAI_CONFIG, GenaiFolder, loop_blocker, read_genai_folder
from .onnx_kv import PREFILL_CHUNK, SharedKVCache, check_chunk, kv_layout
from .sizes import onnx_kv_bytes_per_position, onnx_weight_bytes

log = logging.getLogger(__name__)

STAGE = "export-onnx"
XNNPACK = "XnnpackExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort():
    return optional_import("onnxruntime", "runtime 'onnxruntime' needs onnxruntime", "onnxruntime")


def execution_providers(threads: int) -> list:
    """XNNPACK first where this onnxruntime build has it (the Android/iOS packages, builds with
    ``--use_xnnpack``), then the CPU provider for the nodes XNNPACK does not take (GroupQueryAttention,
    MatMulNBits and the other contrib ops); the CPU provider alone otherwise (the PyPI wheels).

    >>> execution_providers(4)        # on a build with XNNPACK
    [('XnnpackExecutionProvider', {'intra_op_num_threads': '4'}), 'CPUExecutionProvider']
    """
    if XNNPACK in _ort().get_available_providers():
        return [(XNNPACK, {"intra_op_num_threads": str(threads)}), CPU]
    return [CPU]


def make_session(path: str | Path, threads: int, providers: list | None = None):
    """A session with every graph optimization, ``threads`` intra-op threads and no inter-op pool, on
    ``providers`` (default :func:`execution_providers`). Which provider it got: :func:`session_provider`."""
    ort = _ort()
    threads = usable_threads(threads)
    providers = execution_providers(threads) if providers is None else providers
    xnnpack = XNNPACK in map(provider_name, providers)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings about the folded fp16 casts are expected, not news
    if xnnpack:
        # XNNPACK runs its own thread pool beside onnxruntime's; spinning threads of one pool would
        # steal the cores the other needs (onnxruntime's XNNPACK guide). The intra-op pool keeps its
        # threads: a decoder's heaviest nodes are contrib ops that only the CPU provider runs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        if not xnnpack:
            raise
        log.warning("%s: the XNNPACK provider failed (%s); running on the CPU provider", path, e)
        return make_session(path, threads, [CPU])


def provider_name(provider: str | tuple[str, dict]) -> str:
    """The name of an entry of a providers list (a name, or a (name, options) pair)."""
    return provider[0] if isinstance(provider, tuple) else provider


def session_provider(session) -> str:
    """The provider the session put first (the one that takes every node it supports)."""
    return session.get_providers()[0]


class OnnxDecoder:
    """Prefill and decode steps over a decoder session with the ``export-onnx`` inputs and outputs."""

    def __init__(self, session, max_length: int | None = None, *, n_ctx: int | None = None,
                 kv_dims: tuple[int, int] | None = None, share: bool | None = None,
                 prefill_chunk: int | None = PREFILL_CHUNK) -> None:
        """``kv_dims`` (kv_heads, head_size) and ``share``: what a folder says beside a graph that leaves them
        out (:func:`runtimes.onnx_kv.kv_layout`). ``prefill_chunk``: the most tokens one run of the session takes
        (0: a prompt in one run, the memory of its whole length at once)."""
        ort = self._ort = _ort()
        self.session = session
        self.provider = session_provider(session)
        self.max_length = max_length  # positions the graph's rotary tables cover
        self.n_ctx = n_ctx  # the shared buffer's length when a generation needs less (as llama.cpp's n_ctx)
        self.prefill_chunk = check_chunk(prefill_chunk)
        self.layout = kv_layout(session, dims=kv_dims, share=share)
        self.past_names = list(self.layout.past_names)
        self.present_names = list(self.layout.present_names)
        self.output_names = ["logits"] + self.present_names
        self.kv_allocations = 0  # shared KV buffers made: one per generation
        self._empty = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, dim), self.layout.dtype))
                       for n, (heads, dim) in zip(self.past_names, self.layout.shapes)}

    @property
    def shares_buffer(self) -> bool:
        """Whether generation runs on one fixed-size past/present buffer (else the cache grows every step)."""
        return self.layout.shared

    def new_cache(self, capacity: int) -> SharedKVCache:
        """A shared KV buffer of ``capacity`` positions, or ``n_ctx`` where that is more (at most ``max_length``),
        allocated now."""
        capacity = max(capacity, self.n_ctx or 0)
        if self.max_length is not None:
            capacity = min(capacity, self.max_length)
        self.kv_allocations += 1
        return SharedKVCache(self.session, self.layout, capacity, chunk=self.prefill_chunk)

    def _check_length(self, total: int) -> None:
        if self.max_length is not None and total > self.max_length:
            raise ConfigError(f"sequence of {total} tokens is longer than this ONNX export runs "
                              f"({self.max_length}); export again with a larger --max-length")

    def _feed(self, cache: SharedKVCache, ids: Sequence[int]) -> np.ndarray:
        self._check_length(cache.length + len(ids))
        return cache.feed(ids)

    def run(self, ids: Sequence[int], past: dict[str, Any] | None, past_len: int, keep: int) -> tuple[np.ndarray, dict]:
        """A forward pass of ``ids`` after ``past_len`` cached positions (the growing cache), in runs of at most
        ``prefill_chunk`` tokens: (logits of the last ``keep`` positions, every one for 0, [keep, vocab]; present).

        A run whose positions are not among the last ``keep`` asks for one row and drops it; the rows of the others
        are concatenated in order, so ``keep=0`` gives the same [n, vocab] as one run (within float rounding: a
        run after a cache sums attention in another order)."""
        ids = list(ids)
        self._check_length(past_len + len(ids))
        n, step = len(ids), self.prefill_chunk or len(ids)
        want = n if keep <= 0 else min(keep, n)
        rows = []
        for start in range(0, n, step):
            piece = ids[start:start + step]
            need = min(len(piece), want - (n - start - len(piece)))  # this run's rows among the last `want`
            # 0: every position of the run (as one whole-prompt run asked before chunking); 1 where none is kept
            logits, past = self._run_once(piece, past, past_len + start, 0 if need >= len(piece) else max(need, 1))
            if need > 0:
                rows.append(logits[-need:])
        return (rows[0] if len(rows) == 1 else np.concatenate(rows)), past

    def _run_once(self, ids: list[int], past: dict[str, Any] | None, past_len: int,
                  keep: int) -> tuple[np.ndarray, dict]:
        """One run of the session: the last ``keep`` positions' logits, every one for 0 (:meth:`run` checked the
        length)."""
        value = self._ort.OrtValue.ortvalue_from_numpy
        feed = {"input_ids": value(np.asarray([ids], dtype=np.int64)),
                "attention_mask": value(np.ones((1, past_len + len(ids)), dtype=np.int64))}
        if self.layout.keeps_last:
            feed["logits_to_keep"] = value(np.array(keep, dtype=np.int64))
        feed.update(past or self._empty)
        # OrtValues in and out: the cache never leaves onnxruntime's memory (measured ~1 ms/step less
        # Python overhead than an IOBinding rebuilt every step, for 30 layers)
        outs = self.session.run_with_ort_values(self.output_names, feed)
        logits = outs[0].numpy()[0]
        if keep and not self.layout.keeps_last:  # a graph without logits_to_keep gives every position
            logits = logits[-keep:]
        return logits, dict(zip(self.past_names, outs[1:]))

    def logits(self, ids: Sequence[int], last: int | None = None) -> np.ndarray:
        return self.run(list(ids), None, 0, last or 0)[0]

    def generate(self, ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> Generation:
        ids = list(ids)
        if not self.shares_buffer:
            return self._generate_growing(ids, max_new_tokens, stop_ids)
        t0 = time.perf_counter()
        self._check_length(len(ids))
        # the last new token is never fed back, so the buffer needs one position less than the sequence
        cache = self.new_cache(len(ids) + max(max_new_tokens, 1) - 1)
        nxt = int(self._feed(cache, ids).argmax())
        ttft = time.perf_counter() - t0
        new = [nxt]
        while len(new) < max_new_tokens and nxt not in stop_ids:
            nxt = int(self._feed(cache, [nxt]).argmax())
            new.append(nxt)
        return Generation(ids, new, ttft, time.perf_counter() - t0)

    def _generate_growing(self, ids: list[int], max_new_tokens: int, stop_ids: Sequence[int]) -> Generation:
        t0 = time.perf_counter()
        logits, past = self.run(ids, None, 0, 1)
        nxt = int(logits[-1].argmax())
        ttft = time.perf_counter() - t0
        new, length = [nxt], len(ids)
        while len(new) < max_new_tokens and nxt not in stop_ids:
            logits, past = self.run([nxt], past, length, 1)
            length += 1
            nxt = int(logits[-1].argmax())
            new.append(nxt)
        return Generation(ids, new, ttft, time.perf_counter() - t0)

    def cached_logits(self, ids: Sequence[int], split: int) -> np.ndarray:
        """Logits of positions ``split - 1 ..`` computed through the KV cache: a prefill of ``ids[:split]``,
        then one token at a time (what generation does, on the same kind of cache), for checking the cache path."""
        ids = list(ids)
        if self.shares_buffer:
            self._check_length(len(ids))
            cache = self.new_cache(len(ids))
            return np.stack([self._feed(cache, ids[:split])] + [self._feed(cache, [t]) for t in ids[split:]])
        logits, past = self.run(ids[:split], None, 0, 1)
        rows = [logits[-1]]
        for pos in range(split, len(ids)):
            logits, past = self.run([ids[pos]], past, pos, 1)
            rows.append(logits[-1])
        return np.stack(rows)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self) -> None:
        self.decoder: OnnxDecoder | None = None
        self._tokenizer: Any = None
        self._tokenizer_folder: Path | None = None  # read from here on first use of ``tokenizer``
        self.manifest: Any = None
        self.path: Path | None = None

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None, verify: bool = True,
             model_file: str | None = None, tokenizer: bool = True) -> None:
        """Load an ``export-onnx`` artifact directory (``model_file``: e.g. ``model.ort``; default the
        manifest's choice, ``model.onnx``), or a folder onnxruntime-genai's model builder wrote whose graph takes
        only our loop's inputs. The export fixed its length (``max_length``, checked per call); ``n_ctx`` sizes the
        shared KV buffer each generation allocates (at least what it needs), as llama.cpp's context does, so both
        hold the same cache; no load-time checks (``verify``). ``tokenizer=False`` leaves ``self.tokenizer`` None
        (a caller with its own, as chat); else it is read when first asked for (:attr:`tokenizer`)."""
        from compress.manifest import MANIFEST, read_manifest

        folder = Path(artifact)
        if not (folder / MANIFEST).is_file() and (folder / GENAI_CONFIG).is_file():
            self._load_genai_folder(read_genai_folder(folder), profile, n_ctx, model_file)
        else:
            self.manifest = read_manifest(folder)
            if self.manifest.stage != STAGE:
                raise ArtifactError(f"{folder}: a {self.manifest.stage!r} artifact, not an ONNX export ({STAGE!r}); "
                                    "export it first: compress export ARTIFACT --format onnx")
            self.path = folder / (model_file or self.manifest.report.get("model_file", "model.onnx"))
            if not self.path.is_file():
                raise ArtifactError(f"{self.path}: missing from the ONNX export")
            self.decoder = OnnxDecoder(make_session(self.path, profile.threads), self.manifest.report.get("max_length"),
                                       n_ctx=n_ctx)
        self._tokenizer, self._tokenizer_folder = None, folder if tokenizer else None

    @property
    def tokenizer(self):
        """The folder's tokenizer (:func:`compress.tokenizer.load_export_tokenizer`: tokenizer.json through the
        ``tokenizers`` library, no torch), read on first use. Not at load: the harness passes token ids, and
        reading Gemma3's 33 MB tokenizer.json raises the process's peak by 356 MiB (94 stay resident); a bench
        row measures the runtime, not a tokenizer it never uses."""
        if self._tokenizer is None and self._tokenizer_folder is not None:
            self._tokenizer = load_export_tokenizer(self._tokenizer_folder)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer, self._tokenizer_folder = value, None

    def _load_genai_folder(self, g: GenaiFolder, profile: DeviceProfile, n_ctx: int | None,
                           model_file: str | None) -> None:
        """A builder's folder: file, length, KV dimensions and sharing from its genai_config.json."""
        self.manifest = None
        self.path = g.folder / model_file if model_file else g.model_file
        session = make_session(self.path, profile.threads)
        why = loop_blocker(g, [i.name for i in session.get_inputs()])
        if why:
            raise ArtifactError(f"{g.folder}: our onnxruntime loop cannot drive this graph ({why}); run it with "
                                "--runtimes onnxruntime-genai")
        self.decoder = OnnxDecoder(session, g.max_length, n_ctx=n_ctx, kv_dims=(g.kv_heads, g.head_size),
                                   share=g.share_buffer)

    def use(self, decoder: OnnxDecoder, tokenizer=None) -> "OnnxRuntime":
        self.decoder, self.tokenizer = decoder, tokenizer
        return self

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        return self.decoder.logits(token_ids, last)

    def generate(self, token_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> Generation:
        return self.decoder.generate(token_ids, max_new_tokens, stop_ids)

    @property
    def provider(self) -> str | None:
        """The execution provider the loaded session runs on (``XnnpackExecutionProvider``, ...)."""
        return self.decoder.provider if self.decoder else None

    def version(self) -> str:
        return _ort().__version__

    def weight_bytes(self) -> float:
        return onnx_weight_bytes(self.path)

    def kv_bytes_per_position(self) -> float:
        if self.decoder is not None:  # the session's own input types: a float16 cache is half of float32's
            return self.decoder.layout.bytes_per_position
        return onnx_kv_bytes_per_position(self.path)
