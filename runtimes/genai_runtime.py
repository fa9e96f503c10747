"""onnxruntime-genai runtime: runs an ``export-onnx`` artifact through onnxruntime-genai's own generator,
as the Android/iOS apps that embed it would (its ``genai_config.json`` is written by the export), or a folder
onnxruntime-genai's own model builder wrote (no manifest: :mod:`runtimes.genai_folder` validates it).

    rt = get_runtime("onnxruntime-genai")
    rt.load("out/smollm2-onnx-int4", DeviceProfile(threads=2))
    rt.logits([1, 2, 3])                          # (3, vocab) float32, one prefill pass
    gen = rt.generate([1, 2, 3], max_new_tokens=128)

Greedy search only (``do_sample`` false), so it generates the same tokens as :mod:`runtimes.onnx_runtime`
on the same file. Unlike our loop, the generator also stops at the model's end token (as an app would):
the Generation holds the tokens it made, and its speeds count those.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import ArtifactError, ConfigError, optional_import
from compress.tokenizer import load_export_tokenizer

from .base import DeviceProfile, Generation, usable_threads
from .genai_folder import GENAI_CONFIG, GenaiFolder, read_genai_folder
from .sizes import onnx_kv_bytes_per_position, onnx_weight_bytes

STAGE = "export-onnx"


def _og():
    return optional_import("onnxruntime_genai", "runtime 'onnxruntime-genai' needs onnxruntime-genai",
                           "onnxruntime-genai")


class GenaiRuntime:
    name = "onnxruntime-genai"

    def __init__(self) -> None:
        self.model: Any = None
        self._tokenizer: Any = None
        self._tokenizer_folder: Path | None = None  # read from here on first use of ``tokenizer``
        self.manifest: Any = None
        self.path: Path | None = None  # the decoder's model file
        self.max_length: int | None = None
        self.genai: GenaiFolder | None = None

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None,
             verify: bool = True) -> None:
        """Load an ``export-onnx`` artifact directory that holds ``genai_config.json``, or a folder
        onnxruntime-genai's model builder wrote (no manifest); the profile's threads become the decoder
        session's ``intra_op_num_threads``. The folder fixed its length (``search.max_length``, checked per
        call), so ``n_ctx`` is not needed; no load-time checks."""
        from compress.manifest import MANIFEST, read_manifest

        og = _og()
        folder = Path(artifact)
        self.manifest = None  # a builder's folder has none: genai_config.json is all it says
        if (folder / MANIFEST).is_file() or not (folder / GENAI_CONFIG).is_file():
            self.manifest = read_manifest(folder)
            if self.manifest.stage != STAGE:
                raise ArtifactError(f"{folder}: a {self.manifest.stage!r} artifact, not an ONNX export ({STAGE!r}); "
                                    "export it first: compress export ARTIFACT --format onnx")
            if not (folder / GENAI_CONFIG).is_file():
                raise ArtifactError(f"{folder}: no {GENAI_CONFIG} (exported before onnxruntime-genai support, or a "
                                    "model with per-layer head counts); export it again: compress export ARTIFACT "
                                    "--format onnx")
        self.genai = read_genai_folder(folder)
        config = og.Config(str(folder))
        threads = usable_threads(profile.threads)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.path = self.genai.model_file  # the model file, as OnnxRuntime.path
        self.max_length = self.genai.max_length
        self._tokenizer, self._tokenizer_folder = None, folder

    @property
    def tokenizer(self):
        """The folder's tokenizer, read on first use without torch, as :attr:`OnnxRuntime.tokenizer` is (a bench
        row passes token ids and never reads it)."""
        if self._tokenizer is None and self._tokenizer_folder is not None:
            self._tokenizer = load_export_tokenizer(self._tokenizer_folder)
        return self._tokenizer

    def _generator(self, length: int):
        if length > self.max_length:
            # the generator would stop there without a word; our loop refuses the same way
            raise ConfigError(f"sequence of {length} tokens is longer than this ONNX export runs ({self.max_length}); "
                              "export again with a larger --max-length")
        og = _og()
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, do_sample=False)
        return og.Generator(self.model, params)

    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        ids = list(token_ids)
        gen = self._generator(len(ids))
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        # the prefill's own output: every position (the graph's logits_to_keep default)
        rows = np.asarray(gen.get_output("logits"), dtype=np.float32).reshape(len(ids), -1)
        return rows[-last:] if last else rows

    def generate(self, token_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> Generation:
        ids = list(token_ids)
        gen = self._generator(len(ids) + max_new_tokens)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        new: list[int] = []
        ttft = None
        while len(new) < max_new_tokens and not gen.is_done():
            gen.generate_next_token()
            nxt = int(gen.get_next_tokens()[0])
            if ttft is None:
                ttft = time.perf_counter() - t0
            new.append(nxt)
            if nxt in stop_ids:
                break
        total = time.perf_counter() - t0
        return Generation(ids, new, ttft if ttft is not None else total, total)

    def version(self) -> str:
        return _og().__version__

    def weight_bytes(self) -> float:
        return onnx_weight_bytes(self.path)

    def kv_bytes_per_position(self) -> float:
        g = self.genai  # the builder's graphs leave the head size symbolic; genai_config.json names it
        return onnx_kv_bytes_per_position(self.path, dims=(g.kv_heads, g.head_size) if g else None)
