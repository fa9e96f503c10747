"""Model loading and the PyTorch runtime on tiny Llama and Gemma3 folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.data import uses_bos
from compress.errors import ModelLoadError
from compress.models import LoadedModel, load_model, load_tokenizer, resolve_model
from runtimes import DeviceProfile, Runtime, get_runtime, known_runtimes
from runtimes.torch_runtime import TorchRuntime

ARCHS = {"llama": ("tiny_llama_dir", "LlamaForCausalLM", False),
         "gemma3": ("tiny_gemma3_dir", "Gemma3ForCausalLM", True)}


@pytest.fixture(params=sorted(ARCHS))
def tiny(request):
    fixture, cls, bos = ARCHS[request.param]
    return request.getfixturevalue(fixture), cls, bos


def test_tiny_folders_load_through_load_model(tiny):
    folder, cls, bos = tiny
    lm = load_model(folder)
    assert isinstance(lm, LoadedModel)
    assert type(lm.model).__name__ == cls
    assert lm.source.kind == "hf_dir" and lm.source.path == folder
    assert lm.model_id.startswith("dir:")
    assert lm.model_id == load_model(folder).model_id  # stable across loads
    assert not lm.model.training
    assert next(lm.model.parameters()).dtype == torch.float32
    assert lm.model.config.hidden_size == 96
    assert uses_bos(lm.tokenizer) is bos
    assert uses_bos(load_tokenizer(folder)) is bos


def test_model_id_changes_when_the_config_changes(tiny_llama_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    assert load_model(copy).model_id == load_model(tiny_llama_dir).model_id  # content, not path
    cfg = (copy / "config.json").read_text()
    (copy / "config.json").write_text(cfg.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert (copy / "config.json").read_text() != cfg
    assert load_model(copy).model_id != load_model(tiny_llama_dir).model_id


def test_resolve_model_classifies_without_loading(tiny_llama_dir, tmp_path):
    assert resolve_model(tiny_llama_dir).kind == "hf_dir"
    assert resolve_model("smollm2-135m").kind == "bundled"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(gguf).kind == "gguf"
    with pytest.raises(ModelLoadError, match="path does not exist"):
        resolve_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="smollm2-135m, gemma3-270m"):
        resolve_model("gemma-270m")


def test_torch_runtime_logits_match_a_direct_forward(tiny):
    folder, _, _ = tiny
    rt = TorchRuntime()
    rt.load(folder, DeviceProfile(threads=1))
    assert isinstance(rt, Runtime)
    ids = rt.tokenizer("Call me Ishmael. Some years ago, never mind how long.").input_ids
    got = rt.logits(ids)
    with torch.no_grad():
        want = rt.model(torch.tensor([ids])).logits[0].float().numpy()
    assert got.dtype == np.float32
    assert got.shape == (len(ids), rt.model.config.vocab_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    last3 = rt.logits(ids, last=3)
    assert last3.shape == (3, rt.model.config.vocab_size)
    np.testing.assert_allclose(last3, want[-3:], rtol=1e-5, atol=1e-5)


def _greedy_without_cache(model, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def test_torch_runtime_generate_with_kv_cache_equals_greedy_without_cache(tiny):
    folder, _, _ = tiny
    lm = load_model(folder)
    # A random untied output layer: the tiny models' own greedy output repeats one token (Gemma3
    # ties embeddings, so each token predicts itself), which would hide a wrong cache position.
    g = torch.Generator().manual_seed(1)
    lm.model.lm_head.weight = torch.nn.Parameter(torch.randn(lm.model.lm_head.weight.shape, generator=g))
    rt = TorchRuntime().use(lm)
    # 24 prompt tokens + 16 new ones run past the tiny Gemma3's sliding window of 32.
    prompt = rt.tokenizer("It was the best of times, it was the worst of times, it was the age of wisdom").input_ids
    prompt = prompt[:24]
    assert len(prompt) == 24
    gen = rt.generate(prompt, max_new_tokens=16)
    assert gen.prompt_ids == prompt
    assert len(gen.new_ids) == 16
    assert len(set(gen.new_ids)) >= 4  # the comparison below is not between two constant sequences
    assert gen.new_ids == _greedy_without_cache(rt.model, prompt, 16)


def test_generate_stops_at_a_stop_id(tiny_llama_dir):
    rt = TorchRuntime().use(load_model(tiny_llama_dir))
    prompt = rt.tokenizer("Call me Ishmael.").input_ids
    full = rt.generate(prompt, max_new_tokens=8).new_ids
    stop = full[2]
    cut = rt.generate(prompt, max_new_tokens=8, stop_ids=[stop]).new_ids
    assert cut == full[:full.index(stop) + 1]


def test_runtime_registry_knows_pytorch_and_suggests_names():
    from compress.errors import ConfigError

    assert "pytorch" in known_runtimes()
    assert isinstance(get_runtime("pytorch"), TorchRuntime)
    with pytest.raises(ConfigError, match="did you mean 'pytorch'"):
        get_runtime("pytorh")
