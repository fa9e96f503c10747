"""Every family's ``.gguf`` is an input (issue 13 point 5), read as the model it was exported from.

transformers 5.23's GGUF reader drops settings it has no key for: Qwen3's head_dim (tensor shapes then fail),
Phi-3's longrope factors and Phi-4-mini's partial rotary (silently: plain rope), Phi-3's pad id (its class
default 32000 lies past a small vocabulary), and a llama GGUF named exactly "mistral" gets a class with no
tensor map. compress.gguf_import restores them from the file's metadata; what no row reads is refused from the
header alone, before transformers sees the file."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import families
from compress.errors import IncompatibleLayerError
from compress.tiny import family_model, family_tokenizer

READABLE = [f.name for f in families.FAMILIES if f.gguf_input is None]
# Phi-3.5-mini's longrope (original context 1024: short factors) and Phi-4-mini's partial rotary 0.75 with an
# original context of 24, so that the 40 ids below run on the long factors
_FACTORS = {n: {"rope_type": "longrope", "short_factor": [1.0 + 0.25 * i for i in range(n)],
                "long_factor": [1.0 + 2.0 * i for i in range(n)]} for n in (8, 24)}
VARIANTS = {
    "phi3.5-mini": ("phi3", dict(original_max_position_embeddings=1024, max_position_embeddings=8192,
                                 rope_scaling=_FACTORS[8])),
    "phi4-mini": ("phi3", dict(hidden_size=192, num_attention_heads=3, num_key_value_heads=1,
                               partial_rotary_factor=0.75, original_max_position_embeddings=24,
                               max_position_embeddings=256, rope_scaling=_FACTORS[24])),
    # Gemma 3 with a sliding period of 3 and its own rope bases: transformers' GGUF reader keeps neither
    "gemma3-period3": ("gemma3", dict(num_hidden_layers=3, sliding_window=8,
                                      layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                      rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e4},
                                                       "sliding_attention": {"rope_type": "default",
                                                                             "rope_theta": 2e3}})),
}
IDS = [(7 * i + 3) % 500 + 5 for i in range(40)]


def _model(name: str):
    family, overrides = VARIANTS.get(name, (name, {}))
    return family, family_model(family, **overrides)


@functools.lru_cache(maxsize=None)
def _f32_gguf(name: str, root: str) -> Path:
    """The tiny model of ``name`` (random weights) as an F32 GGUF written by our exporter."""
    from export.gguf import GGUFConfig, export_gguf

    family, model = _model(name)
    folder = Path(root) / name
    model.save_pretrained(folder)
    family_tokenizer(family).save_pretrained(folder)
    return export_gguf(folder, GGUFConfig(qtype="F32", check_tokens=32), Path(root) / f"{name}-gguf")


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-families")
    return lambda name: _f32_gguf(name, str(root))


@torch.inference_mode()
def _logits(model) -> np.ndarray:
    return model(torch.tensor([IDS])).logits[0].float().numpy()


@pytest.mark.parametrize("name", READABLE + list(VARIANTS))
def test_each_familys_f32_gguf_loads_as_the_model_it_was_exported_from(name, f32_gguf):
    from compress.gguf_import import load_gguf

    _, original = _model(name)
    model, _ = load_gguf(f32_gguf(name))
    assert type(model).__name__ == type(original).__name__ or (name == "mistral" and
                                                               type(model).__name__ == "LlamaForCausalLM")
    want, got = _logits(original), _logits(model)
    assert np.abs(want - got).max() < 1e-3 * np.abs(want).max(), np.abs(want - got).max()
    rope = model.config.rope_parameters
    assert getattr(model.config, "layer_types", None) == getattr(original.config, "layer_types", None)
    if name == "gemma3-period3":
        assert rope == original.config.rope_parameters
    elif name in VARIANTS:
        assert rope["rope_type"] == "longrope"
        assert rope["short_factor"] == original.config.rope_parameters["short_factor"]
        assert rope["partial_rotary_factor"] == original.config.rope_parameters["partial_rotary_factor"]
        assert model.config.original_max_position_embeddings == original.config.original_max_position_embeddings


def test_a_tiny_phi3_gguf_exports_to_onnx_and_quantizes(f32_gguf, tmp_path, run_cli):
    from compress.manifest import read_manifest

    gguf = f32_gguf("phi3")
    rc, _, err = run_cli("export", gguf, "--format", "onnx", "--qtype", "fp32", "--out", tmp_path / "onnx")
    assert rc == 0, err
    m = read_manifest(tmp_path / "onnx")
    assert m.report["input_stage"] == "import-gguf" and {"prefill", "kv_cache"} <= set(m.report["validation"])
    rc, _, err = run_cli("quantize", gguf, "--scheme", "int8", "--out", tmp_path / "q8")
    assert rc == 0, err
    assert read_manifest(tmp_path / "q8").stage == "quantize"


def _gguf_of_arch(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _no_transformers(monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("transformers was given a GGUF that the family table refuses")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_a_gguf_of_an_architecture_no_row_has_is_refused_from_its_header(tmp_path, monkeypatch, run_cli):
    from compress.gguf_import import load_gguf

    gguf = _gguf_of_arch(tmp_path / "m.gguf", "gpt2")
    _no_transformers(monkeypatch)
    with pytest.raises(IncompatibleLayerError, match=r"GGUF architecture 'gpt2' is not a family compress supports; "
                                                     r"\.gguf inputs compress reads: llama, qwen2, qwen3, phi3, gemma3"):
        load_gguf(gguf)
    rc, _, err = run_cli("export", gguf, "--format", "onnx", "--out", tmp_path / "onnx")
    assert rc != 0 and "GGUF architecture 'gpt2'" in err and len(err.strip().splitlines()) == 1, err


def test_a_row_that_cannot_read_its_ggufs_refuses_them_naming_why_and_what_to_give(f32_gguf, monkeypatch):
    from compress.gguf_import import load_gguf

    gguf = f32_gguf("phi3")
    why = "transformers drops its fused projections"
    rows = tuple(dataclasses.replace(f, gguf_input=why) if f.name == "phi3" else f for f in families.FAMILIES)
    monkeypatch.setattr(families, "FAMILIES", rows)
    _no_transformers(monkeypatch)
    with pytest.raises(IncompatibleLayerError) as e:
        load_gguf(gguf)
    assert str(e.value) == (f"{gguf}: a phi3 GGUF cannot be read as an input ({why}); give the Hugging Face "
                            "folder it was converted from instead")
