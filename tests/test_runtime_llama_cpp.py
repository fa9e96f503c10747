"""The llama.cpp runtime: same token ids, logits matching PyTorch, greedy generation, typed errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from compress.errors import ArtifactError, ConfigError, MissingBackendError
from runtimes import DeviceProfile, get_runtime

IDS = list(range(5, 70))


@pytest.fixture(scope="module")
def gguf_f32(tiny_llama_dir, tmp_path_factory):
    from export.gguf import GGUFConfig, export_gguf

    torch.set_num_threads(1)
    return export_gguf(str(tiny_llama_dir), GGUFConfig(qtype="F32"), tmp_path_factory.mktemp("g") / "f32")


@pytest.fixture(scope="module")
def torch_rt(tiny_llama_dir):
    rt = get_runtime("pytorch")
    rt.load(str(tiny_llama_dir), DeviceProfile(threads=1))
    return rt


def _load(path, **kw):
    rt = get_runtime("llama.cpp")
    rt.load(path, DeviceProfile(threads=1), **kw)
    return rt


def test_llama_cpp_logits_match_pytorch_on_f32_export(gguf_f32, torch_rt):
    rt = _load(gguf_f32.parent)  # the export-gguf artifact directory
    got, want = rt.logits(IDS), torch_rt.logits(IDS)
    assert got.shape == want.shape == (len(IDS), 320)
    assert np.abs(got - want).max() < 1e-3  # F32 weights: only accumulation order differs
    last = rt.logits(IDS, last=4)
    assert last.shape == (4, 320) and np.abs(last - want[-4:]).max() < 1e-3


def test_llama_cpp_plain_gguf_file_loads_and_repeated_calls_reset_the_cache(gguf_f32):
    rt = _load(gguf_f32)  # the .gguf file itself
    first = rt.logits(IDS[:20])
    rt.logits(IDS)  # a longer sequence in between must not leak into the next call
    assert np.array_equal(first, rt.logits(IDS[:20]))


def test_llama_cpp_greedy_generation_matches_pytorch(gguf_f32, torch_rt):
    rt = _load(gguf_f32)
    g, ref = rt.generate(IDS, 12), torch_rt.generate(IDS, 12)
    assert g.new_ids == ref.new_ids and len(g.new_ids) == 12
    assert 0 < g.time_to_first_token_s < g.total_s and g.decode_tokens_per_s > 0
    assert rt.version() == __import__("llama_cpp").__version__
    # generation keeps only the last row; logits() afterwards still returns every position
    assert rt.logits(IDS).shape == (len(IDS), 320)


def test_llama_cpp_refuses_sequences_longer_than_its_context(gguf_f32):
    rt = _load(gguf_f32, n_ctx=32)
    with pytest.raises(ConfigError, match="longer than the llama.cpp context"):
        rt.logits(IDS)


def test_llama_cpp_refuses_non_gguf_artifacts(tiny_llama_dir, tmp_path):
    from compress.quantize import QuantConfig, run_quantize

    q = run_quantize(str(tiny_llama_dir), QuantConfig(scheme="int8", eval_tokens=0), tmp_path / "q8")
    with pytest.raises(ArtifactError, match="not a GGUF export"):
        _load(q)
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(ArtifactError, match="not a .gguf file"):
        _load(tmp_path / "x.bin")


def test_missing_llama_cpp_names_the_install_command(gguf_f32, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(MissingBackendError, match="pip install llama-cpp-python"):
        _load(gguf_f32)


def test_a_file_llama_cpp_refuses_is_an_artifact_error_quoting_llama_cpp(gguf_f32, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf_f32.read_bytes()[:4096])  # the header and part of the metadata, no tensors
    with pytest.raises(ArtifactError, match="llama.cpp cannot load it") as e:
        _load(bad)
    assert "\n" not in str(e.value)
