"""Phi-3.5-mini's longrope (short and long rotary factors, an attention factor) and Phi-4-mini's partial rotary
(only the first 3/4 of each head rotates), through both exporters and validated against PyTorch.

Two tiny Phi-3 configs: ``phi4-mini`` (partial rotary 0.75, original context 24, so that every validation runs
on sequences past it: the long factors) and ``phi3.5-mini`` (full rotary, original context 1024: the short
factors). Each goes to GGUF (llama.cpp) and ONNX (onnxruntime, KV cache included), from the float model and
from an int4 quantization, each export validating itself at its own tolerance."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from artifact_fixtures import train_on_ids

from compress.errors import IncompatibleLayerError
from compress.families import BY_NAME, check_config, check_model_files, longrope, rotary_dim
from compress.manifest import read_manifest
from compress.tiny import family_model, family_tokenizer


def _factors(n: int) -> dict:
    # short and long sets far apart and neither all ones, so that a dropped or swapped set shows in the logits
    return {"rope_type": "longrope", "short_factor": [1.0 + 0.25 * i for i in range(n)],
            "long_factor": [1.0 + 2.0 * i for i in range(n)]}


VARIANTS = {
    # head_dim 64, 48 of it rotating (24 factors): GroupQueryAttention takes rotary dims in multiples of 16
    "phi4-mini": dict(hidden_size=192, num_attention_heads=3, num_key_value_heads=1, partial_rotary_factor=0.75,
                      original_max_position_embeddings=24, max_position_embeddings=256, rope_scaling=_factors(24)),
    "phi3.5-mini": dict(original_max_position_embeddings=1024, max_position_embeddings=8192,
                        rope_scaling=_factors(8)),
}


@functools.lru_cache(maxsize=None)
def _memorized(name: str, root: str):
    """The variant trained on the check ids, so that top-1 agreement measures the export, not near-ties."""
    from pathlib import Path

    from compress.data import check_ids

    tok = family_tokenizer("phi3")
    return train_on_ids(family_model("phi3", **VARIANTS[name]), tok, Path(root) / name, check_ids(tok, 128), 120)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    root = tmp_path_factory.mktemp("longrope")
    return lambda name: _memorized(name, str(root))


def _hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_longrope_and_partial_rotary_export_to_gguf_and_onnx_matching_pytorch(name, memorized, tmp_path, run_cli,
                                                                               one_thread):
    import gguf

    src = memorized(name)
    config = json.loads((src / "config.json").read_text())
    model = _hf_model(src)
    # GGUF F32: llama.cpp agrees with PyTorch on the check ids (the export refuses the file otherwise)
    rc, _, err = run_cli("export", src, "--format", "gguf", "--qtype", "F32", "--out", tmp_path / "f32")
    assert rc == 0, err
    v = read_manifest(tmp_path / "f32").report["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kl_mean"] <= 1e-4, v
    reader = gguf.GGUFReader(tmp_path / "f32" / "model.F32.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    rot = model.model.rotary_emb
    assert fields["phi3.rope.dimension_count"] == rotary_dim(config) == 2 * len(rot.inv_freq)
    assert fields["phi3.rope.scaling.original_context_length"] == config["original_max_position_embeddings"]
    np.testing.assert_allclose(fields["phi3.rope.scaling.attn_factor"], rot.attention_scaling, rtol=1e-6)
    assert rot.attention_scaling > 1.0  # the factor is really there to be carried
    for kind in ("long", "short"):
        np.testing.assert_array_equal(tensors[f"rope_factors_{kind}.weight"],
                                      np.float32(config["rope_parameters"][f"{kind}_factor"]))
    # ONNX fp32: onnxruntime agrees with PyTorch, the prefill and the KV-cache path
    rc, _, err = run_cli("export", src, "--format", "onnx", "--qtype", "fp32", "--out", tmp_path / "onnx")
    assert rc == 0, err
    v = read_manifest(tmp_path / "onnx").report["validation"]
    assert {"prefill", "kv_cache"} <= set(v), v
    # int4 integers carried into both formats, each validated against the quantized model
    q = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", "int4-rtn", "--group-size", "32", "--out", q)
    assert rc == 0, err
    rc, _, err = run_cli("export", q, "--format", "gguf", "--qtype", "Q4_0", "--out", tmp_path / "q4")
    assert rc == 0, err
    rc, _, err = run_cli("export", q, "--format", "onnx", "--qtype", "int4", "--out", tmp_path / "onnx4")
    assert rc == 0, err


def test_onnx_switches_to_the_long_factors_past_the_original_context_as_pytorch_does(memorized, tmp_path,
                                                                                    run_cli, one_thread):
    """The graph holds both tables and picks one by the total length, as transformers picks per forward pass:
    sequences of up to 24 positions (the original context) use the short factors, longer ones the long."""
    from runtimes.onnx_runtime import OnnxDecoder, make_session

    src = memorized("phi4-mini")
    rc, _, err = run_cli("export", src, "--format", "onnx", "--qtype", "fp32", "--out", tmp_path / "onnx")
    assert rc == 0, err
    model = _hf_model(src)
    decoder = OnnxDecoder(make_session(tmp_path / "onnx" / "model.onnx", threads=1), 256)
    ids = np.random.default_rng(0).integers(3, 500, 60).tolist()
    for n in (20, 24, 25, 60):
        np.testing.assert_allclose(decoder.logits(ids[:n]), _hf_logits(model, ids[:n]), atol=1e-3, rtol=0)
    # the two regimes really differ: the first 20 positions of a 60-token pass (long) are not those of a
    # 20-token pass (short), so the comparisons above could not pass with the wrong table
    assert np.abs(_hf_logits(model, ids[:60])[:20] - _hf_logits(model, ids[:20])).max() > 0.05


def test_llama_cpp_picks_the_factors_by_its_context_size_as_the_family_row_says(memorized, tmp_path, run_cli):
    """llama.cpp uses the long factors whenever n_ctx exceeds the original context, even for a short
    sequence PyTorch runs with the short ones: the limit the phi3 row documents. Within it, they agree."""
    from llama_cpp import Llama

    from compress.logits import compare

    src = memorized("phi3.5-mini")
    rc, _, err = run_cli("export", src, "--format", "gguf", "--qtype", "F32", "--out", tmp_path / "g")
    assert rc == 0, err
    assert "n_ctx" in BY_NAME["phi3"].notes
    model = _hf_model(src)
    from compress.data import check_ids

    ids = check_ids(family_tokenizer("phi3"), 64)
    want = _hf_logits(model, ids)
    got = {}
    for n_ctx in (512, 2048):  # at most, and beyond, the original context of 1024
        llm = Llama(model_path=str(tmp_path / "g" / "model.F32.gguf"), n_ctx=n_ctx, n_batch=64, logits_all=True,
                    n_threads=1, verbose=False)
        llm.eval(ids)
        got[n_ctx] = np.array(llm.scores[: len(ids)], dtype=np.float32)
        llm.close()
    kl = {n: compare(want, g).kl_mean for n, g in got.items()}
    assert kl[512] <= 1e-4 and kl[2048] > 0.1, kl  # 1e-4: the F32 export's own tolerance


# ---- from config.json alone ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"factor": 16.0}, {"attention_factor": 1.5}])
def test_longrope_attention_factor_is_transformers_own(extra):
    cfg = dict(VARIANTS["phi4-mini"], rope_scaling={**_factors(24), **extra})
    model = family_model("phi3", **cfg)
    got = longrope(model.config.to_dict())
    assert got.attention_factor == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-12)
    assert (got.original_context, len(got.short_factor)) == (24, 24)


def test_longrope_settings_a_model_cannot_run_are_refused_before_any_weight(tmp_path):
    from compress.tiny import save_family

    folder = save_family(tmp_path / "m", "phi3", **VARIANTS["phi4-mini"])
    for f in folder.glob("*.safetensors"):
        f.unlink()
    assert check_model_files(folder).name == "phi3"  # the model as saved is accepted
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"]["long_factor"] = cfg["rope_parameters"]["long_factor"][:-1]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleLayerError, match=r"rope long_factor has 23 values; longrope needs one per rotary "
                                                     r"frequency \(24 = rotary dims 48 / 2\)"):
        check_model_files(folder)
    # a family whose PyTorch code rotates whole heads keeps refusing partial rotary and longrope
    with pytest.raises(IncompatibleLayerError, match="partial_rotary_factor 0.75 is not supported for llama"):
        check_config(BY_NAME["llama"], {"partial_rotary_factor": 0.75}, "x")
    with pytest.raises(IncompatibleLayerError, match="rope_type 'longrope' is not supported for llama"):
        check_config(BY_NAME["llama"], {"rope_scaling": _factors(8)}, "x")


def test_onnx_refuses_rotary_dims_groupqueryattention_cannot_take_from_the_config(tmp_path, run_cli, capsys):
    import yaml

    from compress.tiny import save_family

    # head_dim 32: 24 rotary dims, where GroupQueryAttention takes multiples of 16
    folder = save_family(tmp_path / "m", "phi3", hidden_size=192, num_attention_heads=6, num_key_value_heads=2,
                         partial_rotary_factor=0.75, rope_scaling=_factors(12))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(folder), "work_dir": str(tmp_path / "work"),
                                      "export": [{"name": "o", "format": "onnx", "precision": "fp32"}]}))
    capsys.readouterr()  # transformers' advice while the folder was built, not the CLI's output
    rc, _, err = run_cli("run", recipe, "--dry-run")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.strip().startswith(
        "error: export o: config.partial_rotary_factor: 24 rotary dims of head_dim 32 is not a multiple of 16"), err
    recipe.write_text(yaml.safe_dump({"model": str(folder), "work_dir": str(tmp_path / "work"),
                                      "export": [{"name": "g", "format": "gguf", "qtype": "F32"}]}))
    rc, _, err = run_cli("run", recipe, "--dry-run")
    assert rc == 0, err  # llama.cpp rotates any even number of dims
