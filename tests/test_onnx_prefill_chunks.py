"""A prompt longer than the prefill chunk runs in consecutive runs of the session through the same KV cache
(issue #14: the activations of 256 tokens at a time, not of the whole prompt): the shared buffer, the growing cache
and ``logits`` all give the same greedy tokens and logits as one run and as PyTorch."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from artifact_fixtures import torch_greedy, without_kv_declaration
from compress.errors import ConfigError
from compress.manifest import read_manifest
from compress.tiny import save_tiny
from export.onnx import OnnxConfig, export_onnx
from runtimes.onnx_kv import KV_META, PREFILL_CHUNK
from runtimes.onnx_runtime import OnnxDecoder, make_session

_WORK = Path(tempfile.mkdtemp(prefix="prefill-chunk-tests-"))
atexit.register(shutil.rmtree, _WORK, True)
SHAPES = {"llama": {"num_attention_heads": 6, "num_key_value_heads": 2},  # head_dim 16: GroupQueryAttention's x16
          "gemma3": {"head_dim": 32}}  # a 32-token sliding window: every run after the first starts past it
# 300 tokens: one run of the default 256 and one of 44; the 20 new tokens end before the export's 336 positions
PROMPT = np.random.default_rng(0).integers(3, 320, 300).tolist()
NEW = 20


@functools.lru_cache(maxsize=None)
def _src(arch: str) -> Path:
    return save_tiny(_WORK / f"src-{arch}", arch, seed=0, **SHAPES[arch])


@functools.lru_cache(maxsize=None)
def _export(arch: str) -> Path:
    return export_onnx(str(_src(arch)), OnnxConfig(precision="fp32", max_length=336), _WORK / f"onnx-{arch}").parent


@functools.lru_cache(maxsize=None)
def _torch(arch: str):
    return torch_greedy(_src(arch), PROMPT, NEW)


def _decoder(arch: str, **kw) -> OnnxDecoder:
    folder = _export(arch)
    return OnnxDecoder(make_session(folder / "model.onnx", threads=1), read_manifest(folder).report["max_length"], **kw)


def _run_lengths(decoder: OnnxDecoder, monkeypatch) -> list[int]:
    """Records the input_ids length of every run of the decoder's session on the growing path (and ``logits``)."""
    lengths: list[int] = []
    run = decoder.session.run_with_ort_values

    def run_with_ort_values(names, feed, *a):
        lengths.append(feed["input_ids"].shape()[1])
        return run(names, feed, *a)

    monkeypatch.setattr(decoder.session, "run_with_ort_values", run_with_ort_values)
    return lengths


def _fed_lengths(cache, monkeypatch) -> list[int]:
    """Records the length of every run of a shared-buffer cache's session."""
    fed: list[int] = []
    run = cache._run
    monkeypatch.setattr(cache, "_run", lambda ids: fed.append(len(ids)) or run(ids))
    return fed


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_prompt_longer_than_the_chunk_runs_in_pieces_through_the_shared_buffer_like_one_run_and_pytorch(
        arch, monkeypatch):
    assert PREFILL_CHUNK == 256
    want, ref = _torch(arch)
    whole = _decoder(arch, prefill_chunk=0)
    chunked = _decoder(arch)
    assert chunked.shares_buffer and chunked.prefill_chunk == PREFILL_CHUNK
    one_run = whole.new_cache(len(PROMPT)).feed(PROMPT)
    cache = chunked.new_cache(len(PROMPT) + NEW)
    fed = _fed_lengths(cache, monkeypatch)
    row = cache.feed(PROMPT)
    assert fed == [256, 44] and cache.length == len(PROMPT)
    np.testing.assert_allclose(row, one_run, atol=1e-5, rtol=0)
    np.testing.assert_allclose(row, ref[len(PROMPT) - 1], atol=1e-5, rtol=0)
    # the runtime's own loop: the same greedy tokens in runs of 256 + 44, then one token a step
    got = chunked.generate(PROMPT, NEW).new_ids
    assert got == whole.generate(PROMPT, NEW).new_ids == want


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logits_of_a_long_prompt_are_every_runs_rows_concatenated(arch, monkeypatch):
    """The scoring path: perplexity needs every position's logits, so each run keeps all of its rows."""
    want, ref = _torch(arch)
    whole = _decoder(arch, prefill_chunk=0).logits(PROMPT)
    chunked = _decoder(arch)
    lengths = _run_lengths(chunked, monkeypatch)
    rows = chunked.logits(PROMPT)
    assert lengths == [256, 44] and rows.shape == whole.shape == (len(PROMPT), 320)
    np.testing.assert_allclose(rows, whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rows, ref[:len(PROMPT)], atol=1e-5, rtol=0)
    for last in (60, 44, 10, 1):  # across both runs, exactly the last run, within it
        np.testing.assert_allclose(chunked.logits(PROMPT, last), rows[-last:], atol=1e-6, rtol=0)


def test_the_growing_cache_prefills_in_runs_too_with_the_same_greedy_tokens(tmp_path, monkeypatch):
    folder = _export("llama")
    model = without_kv_declaration(folder, tmp_path, KV_META)  # as exported before the buffer was shared
    decoder = OnnxDecoder(make_session(model, threads=1), 336)
    assert not decoder.shares_buffer
    lengths = _run_lengths(decoder, monkeypatch)
    assert decoder.generate(PROMPT, NEW).new_ids == _torch("llama")[0]
    assert lengths == [256, 44] + [1] * (NEW - 1)


def test_a_prompt_of_at_most_one_chunk_runs_once(monkeypatch):
    decoder = _decoder("llama", prefill_chunk=16)
    cache = decoder.new_cache(40)
    fed = _fed_lengths(cache, monkeypatch)
    assert cache.chunk == 16
    np.testing.assert_allclose(cache.feed(PROMPT[:16]), _decoder("llama", prefill_chunk=0).logits(PROMPT[:16])[-1],
                               atol=1e-5, rtol=0)
    cache.feed(PROMPT[16:40])  # after the cache: 16 + 8
    assert fed == [16, 16, 8]


@pytest.mark.parametrize("bad", [-1, 2.5, "256", True])
def test_a_prefill_chunk_is_a_positive_token_count_or_zero(bad):
    with pytest.raises(ConfigError, match="prefill chunk .*a number of tokens >= 1, or 0 for a prompt in one run"):
        _decoder("llama", prefill_chunk=bad)
