"""End to end on tiny models: the artifact's integers are exactly what the PyTorch runtime uses, the
report says what happened, mixed precision keeps its budget, streaming matches a full forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress.models import load_model
from compress.quantize import QuantConfig, calibration_ids, quantize_, run_quantize
from compress.quantize.modules import W8A8Linear, fake_quant_per_token

FAST = dict(samples=4, seq_len=32, eval_tokens=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors run on one thread


def _decode(raw: dict[str, np.ndarray], name: str, meta: dict) -> np.ndarray:
    """FORMAT.md's dequantization, written independently of compress.quantize.grid."""
    qw = raw[f"{name}.qweight"]
    if meta["bits"] == 4:
        q = np.empty((qw.shape[0], qw.shape[1] * 2), dtype=np.float32)
        q[:, 0::2], q[:, 1::2] = qw & 0x0F, qw >> 4
    else:
        q = qw.astype(np.float32)
    g = meta["group_size"]
    scale = np.repeat(raw[f"{name}.scales"].astype(np.float32), g, axis=1)
    if meta["symmetric"]:
        assert f"{name}.zeros" not in raw
        zero = 8.0 if meta["bits"] == 4 else 0.0
    else:
        zero = np.repeat(raw[f"{name}.zeros"].astype(np.float32), g, axis=1)
    return (q - zero) * scale


@pytest.mark.parametrize("arch,scheme,extra", [
    ("llama", "int4-gptq", ["--act-order", "--lm-head", "int8"]),
    ("llama", "int4-awq", ["--asymmetric"]),
    ("gemma3", "int4-awq", ["--embeddings", "int4", "--lm-head", "int4"]),
    ("gemma3", "w8a8", []),
    ("llama", "int8", ["--embeddings", "int8"]),
])
def test_stored_integers_dequantize_exactly_to_the_runtime_weights(run_cli, tiny_llama_dir, tiny_gemma3_dir,
                                                                   tmp_path, arch, scheme, extra):
    from safetensors.numpy import load_file

    src = tiny_llama_dir if arch == "llama" else tiny_gemma3_dir
    out = tmp_path / "q"
    rc, _, err = run_cli("quantize", src, "--scheme", scheme, "--group-size", "32", "--samples", "4",
                         "--seq-len", "32", "--eval-tokens", "64", *extra, "--out", out)
    assert rc == 0, err
    info = json.loads((out / "quantization.json").read_text())
    raw = load_file(str(out / "model.safetensors"))
    lm = load_model(out)
    weights = dict(lm.model.named_parameters(remove_duplicate=False))
    assert info["layers"], "nothing was quantized"
    for name, meta in info["layers"].items():
        assert f"{name}.weight" not in raw
        assert list(raw[f"{name}.qweight"].shape) == [meta["shape"][0], meta["shape"][1] // (2 if meta["bits"] == 4
                                                                                             else 1)]
        assert raw[f"{name}.scales"].dtype == np.float16
        assert np.array_equal(_decode(raw, name, meta), weights[f"{name}.weight"].detach().numpy()), name
    for key, value in raw.items():
        if not key.endswith((".qweight", ".scales", ".zeros")):
            assert value.dtype == np.float32, key
    if info["tied"]:
        assert "lm_head.weight" not in raw and "lm_head.qweight" not in raw
        assert torch.equal(lm.model.lm_head.weight, lm.model.model.embed_tokens.weight)
    w8a8 = [m for m in lm.model.modules() if isinstance(m, W8A8Linear)]
    assert bool(w8a8) == (scheme == "w8a8")


def test_reloaded_artifact_gives_the_in_memory_quantized_logits(tiny_gemma3_dir, tmp_path):
    cfg = QuantConfig(scheme="int4-gptq", group_size=32, **FAST)
    out = run_quantize(str(tiny_gemma3_dir), cfg, tmp_path / "q")
    lm = load_model(tiny_gemma3_dir)
    from compress.data import load_text

    quantize_(lm.model, cfg, calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=4, seq_len=32))
    ids = torch.tensor([[1] + list(range(5, 60))])
    with torch.no_grad():
        assert torch.equal(load_model(out).model(ids).logits, lm.model(ids).logits)


def test_w8a8_rounds_each_tokens_activations_to_int8():
    x = torch.randn(5, 40) * torch.logspace(-2, 1, 5)[:, None]  # tokens of very different magnitude
    y = fake_quant_per_token(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    k = y / step
    assert torch.allclose(k, k.round(), atol=1e-3)  # on each token's own int8 grid
    assert bool(((y - x).abs() <= step / 2 + 1e-6).all())


def test_report_says_what_was_quantized_skipped_and_how_big(tiny_llama_dir, tmp_path):
    from compress.manifest import read_manifest

    cfg = QuantConfig(scheme="int4-rtn", group_size=32, exclude="layers.0.mlp.down_proj", lm_head="int8", **FAST)
    r = read_manifest(run_quantize(str(tiny_llama_dir), cfg, tmp_path / "q")).report
    assert r["quantized"] == 14 and r["precision"] == {"int4": 13, "int5": 0, "int8": 1}
    assert r["skipped"] == {"model.layers.0.mlp.down_proj": "excluded by --exclude 'layers.0.mlp.down_proj'"}
    assert r["embeddings"] == "keep" and r["lm_head"] == "int8" and r["tied"] is False
    assert r["bits_per_weight_before"] == 32.0 and r["bytes_after"] < r["bytes_before"] / 2
    files = sum(f.stat().st_size for f in (tmp_path / "q").glob("model.safetensors"))
    assert abs(files - r["bytes_after"]) < 20_000  # the file really is that small (header aside)
    e = r["eval"]
    assert e["data"] == "moby-dick-calib" and e["tokens"] > 0 and e["kl"] > 0
    assert e["perplexity_ratio"] == pytest.approx(e["perplexity"] / e["perplexity_reference"])


def test_mixed_precision_respects_the_budget(tiny_llama_dir, tmp_path):
    from compress.manifest import read_manifest

    cfg = QuantConfig(scheme="int4-gptq", group_size=32, budget_bits=7.0, analyze_tokens=32, **FAST)
    out = run_quantize(str(tiny_llama_dir), cfg, tmp_path / "q")
    r = read_manifest(out).report
    info = json.loads((out / "quantization.json").read_text())
    table, choice = r["analysis"], r["budget"]["choice"]
    assert sum(row["kind"] == "linear" for row in table.values()) == 14
    assert {n for n, row in table.items() if row["kind"] != "linear"} == {"model.embed_tokens", "lm_head"}
    assert all(row["kl_int4"] > 0 for row in table.values()) and all("kl_int5" in row for row in table.values())
    params = sum(table[n]["params"] for n in choice)
    bits = sum(table[n]["params"] * (16 if b == 16 else info["layers"][n]["bits"] + 16 / 32)
               for n, b in choice.items())
    assert bits / params <= 7.0
    assert r["budget"]["bits_per_weight"] == pytest.approx(bits / params)
    assert set(choice.values()) - {4}, "a 7-bit budget should lift some layer above int4"
    for n, b in choice.items():
        if b == 16:
            assert info["skipped"][n] == "kept in float by --budget-bits"
        else:
            assert info["layers"][n]["bits"] == b
    # the layer the analysis found most sensitive gets at least the precision of the least sensitive
    ranked = sorted(table, key=lambda n: table[n]["kl_int4"])
    assert choice[ranked[-1]] >= choice[ranked[0]]


def test_sensitivity_replays_the_model_exactly(tiny_gemma3_dir):
    from compress.quantize.calibrate import capture
    from compress.quantize.sensitivity import run_from

    lm = load_model(tiny_gemma3_dir)
    ids = torch.tensor([[1] + list(range(5, 45))])
    inputs, kwargs = capture(lm.model, ids, 1, all_layers=True)
    with torch.no_grad():
        full = lm.model(ids).logits
    assert torch.allclose(run_from(lm.model, 0, inputs[0], kwargs), full, atol=1e-5)
    assert torch.allclose(run_from(lm.model, 1, inputs[1], kwargs), full, atol=1e-5)


def test_streamed_layers_match_a_full_forward(tiny_gemma3_dir):
    """Captured first-layer inputs and per-layer kwargs (sliding and full attention differ) replay
    the model: what calibration sees is what inference computes."""
    from compress.quantize.calibrate import capture, layer_forward

    lm = load_model(tiny_gemma3_dir)
    ids = torch.randint(3, 300, (5, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    x, kwargs = capture(lm.model, ids, batch=2)
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
        assert torch.allclose(x, hidden[0])
        for i, layer in enumerate(lm.model.model.layers):
            x = torch.cat([layer_forward(layer, x[a:a + 2], kwargs[i]) for a in range(0, 5, 2)])
            if i + 1 < len(lm.model.model.layers):
                assert torch.allclose(x, hidden[i + 1], atol=1e-5), i


def test_config_round_trips_and_rejects_bad_values():
    from compress.config import config_from_dict
    from compress.errors import ConfigError

    cfg = QuantConfig(scheme="int4-awq", group_size=64, symmetric=False, exclude="lm_head", budget_bits=5.5)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="quantize.group_size: 48 is not one of"):
        QuantConfig(group_size=48)
    with pytest.raises(ConfigError, match="act_order: only the GPTQ schemes"):
        QuantConfig(scheme="int4-awq", act_order=True)
    with pytest.raises(ConfigError, match="needs an int4 or int5 scheme"):
        QuantConfig(scheme="int8", budget_bits=6.0)
    assert QuantConfig(scheme="int8").effective_group_size == 0
    assert QuantConfig(scheme="int4-rtn").effective_group_size == 128


def test_stored_reference_logits_score_exactly_like_a_copy_of_the_model(tiny_llama_dir, tmp_path):
    import copy

    from compress.data import load_text
    from compress.quantize.scoring import score_against, store_logits

    cfg = QuantConfig(scheme="int4-gptq", group_size=32, **FAST)
    lm = load_model(tiny_llama_dir)
    reference = copy.deepcopy(lm.model)
    stored = store_logits(lm.model, lm.tokenizer, cfg.calib, 1100, where=tmp_path)  # 3 windows
    quantize_(lm.model, cfg, calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=4, seq_len=32))
    from_disk = score_against(lm.model, stored, lm.tokenizer, cfg.calib, 1100)
    stored.close()
    assert from_disk == score_against(lm.model, reference, lm.tokenizer, cfg.calib, 1100)
    # the logits file leaves no name behind (conftest's model cache, tmp_path/cache, is not ours)
    assert from_disk["kl"] > 0 and not [p for p in tmp_path.iterdir() if p.name != "cache"]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gptq_fits_the_output_projection_to_the_final_hidden_states(arch, tiny_llama_dir, tiny_gemma3_dir):
    """With a GPTQ scheme the output projection (tiny llama: an untied lm_head; tiny gemma3: the tied
    table) is quantized from the quantized decoder's final-norm outputs, so its output error on them is
    below round-to-nearest's on the same grid."""
    from compress.data import load_text
    from compress.quantize.grid import Grid, rtn

    lm = load_model(tiny_llama_dir if arch == "llama" else tiny_gemma3_dir)
    head = lm.model.get_output_embeddings()
    tied = head.weight is lm.model.get_input_embeddings().weight
    cfg = QuantConfig(scheme="int4-gptq", group_size=32, **({"embeddings": "int4"} if tied else {"lm_head": "int4"}),
                      **FAST)
    w = head.weight.detach().clone()
    ids = calibration_ids(lm.tokenizer, load_text(cfg.calib), samples=4, seq_len=32)
    res = quantize_(lm.model, cfg, ids)
    layers = res.quantization_json()["layers"]
    name = next(n for n, m in lm.model.named_modules() if m is (lm.model.get_input_embeddings() if tied else head))
    assert layers[name]["method"] == "gptq" and res.plan.tied is tied
    with torch.no_grad():  # the head's input: the final norm's output of the quantized decoder
        h = lm.model.get_decoder()(ids, use_cache=False).last_hidden_state.reshape(-1, w.shape[1])

    def out_err(wq: torch.Tensor) -> float:
        return float(((h @ (wq - w).T) ** 2).sum())

    assert out_err(head.weight.detach()) < 0.9 * out_err(rtn(w, Grid(4, 32, True)).dequantize())
