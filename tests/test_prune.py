"""Pruning on tiny models: depth and width give loadable, physically smaller models whose outputs equal
the original with the removed parts masked; Wanda / 2:4 masks have the stated pattern."""

from __future__ import annotations

import json

import pytest
import torch
from compress.tiny import build_model, save_tiny

from compress.errors import ConfigError
from compress.manifest import read_manifest
from compress.models import load_model
from compress.prune import PruneConfig, prune
from compress.prune.depth import skipped
from compress.prune.model_ops import decoder_layers
from compress.prune.sparsity import two_four_mask, wanda_mask

torch.set_num_threads(1)
IDS = torch.randint(3, 320, (2, 48), generator=torch.Generator().manual_seed(1))
SMALL = dict(samples=8, seq_len=64, eval_tokens=256)


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("p") / "llama4", "llama", num_hidden_layers=4)


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("p") / "gemma4", "gemma3", num_hidden_layers=4,
                     layer_types=["sliding_attention", "full_attention"] * 2)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("metric", ["cosine", "perplexity"])
def test_depth_prune_equals_the_original_with_dropped_layers_skipped(llama4, tmp_path, metric):
    out = prune(str(llama4), PruneConfig(method="depth", layers=3, depth_metric=metric, **SMALL), tmp_path / "d")
    rep = read_manifest(out).report
    dropped = [int(k) for k in rep["layers_dropped"]]
    assert len(dropped) == 1 and rep["layers_kept"] == [i for i in range(4) if i not in dropped]
    # the dropped layer is the least important one by the recorded scores
    assert rep["importance"][dropped[0]] == min(rep["importance"])
    small = load_model(out).model
    assert small.config.num_hidden_layers == 3 and len(decoder_layers(small)[1]) == 3
    assert rep["params_after"] == sum(p.numel() for p in small.parameters())
    ref = load_model(str(llama4)).model
    with skipped([decoder_layers(ref)[1][dropped[0]]]):
        want = _logits(ref)
    torch.testing.assert_close(_logits(small), want, rtol=1e-5, atol=1e-5)


def test_depth_prune_of_gemma3_keeps_each_layers_attention_kind(gemma4, tmp_path):
    out = prune(str(gemma4), PruneConfig(method="depth", layers=2, **SMALL), tmp_path / "d")
    rep = read_manifest(out).report
    cfg = json.loads((out / "config.json").read_text())
    kinds = ["sliding_attention", "full_attention"] * 2
    assert cfg["layer_types"] == [kinds[i] for i in rep["layers_kept"]]
    small = load_model(out).model
    ref = load_model(str(gemma4)).model
    with skipped([decoder_layers(ref)[1][i] for i in map(int, rep["layers_dropped"])]):
        want = _logits(ref)
    torch.testing.assert_close(_logits(small), want, rtol=1e-5, atol=1e-5)


def _masked_reference(ref, rep, head_dim):
    """The original model with removed MLP channels and query heads zeroed in down_proj / o_proj."""
    _, layers = decoder_layers(ref)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            info = rep["layers"][str(i)]
            heads = layer.self_attn.o_proj.in_features // head_dim
            for h in range(heads):
                if h not in info["query_heads_kept"]:
                    layer.self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
    return ref


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_width_prune_equals_the_original_with_removed_channels_and_heads_masked(arch, llama4, gemma4, tmp_path):
    src = llama4 if arch == "llama" else gemma4
    cfg = PruneConfig(method="width", intermediate_size=100, num_attention_heads=2, num_key_value_heads=1, **SMALL)
    out = prune(str(src), cfg, tmp_path / "w")
    rep = read_manifest(out).report
    conf = json.loads((out / "config.json").read_text())
    assert (conf["intermediate_size"], conf["num_attention_heads"], conf["num_key_value_heads"]) == (100, 2, 1)
    hd = conf["head_dim"]
    assert hd == 24
    small = load_model(out).model
    attn = decoder_layers(small)[1][0].self_attn
    assert attn.q_proj.weight.shape == (2 * hd, 96) and attn.k_proj.weight.shape == (hd, 96)
    assert decoder_layers(small)[1][0].mlp.down_proj.weight.shape == (96, 100)
    for info in rep["layers"].values():  # whole KV groups: every kept query head is in the kept group
        kv = info["kv_heads_kept"]
        assert len(kv) == 1 and all(h // 2 == kv[0] for h in info["query_heads_kept"])
    # reference: zero the removed channels' down_proj columns (recomputed from the kept weights)
    ref = load_model(str(src)).model
    _, layers = decoder_layers(ref)
    _, small_layers = decoder_layers(small)
    with torch.no_grad():
        for i, (layer, sl) in enumerate(zip(layers, small_layers)):
            keep = [c for c in range(160)
                    if any(torch.equal(layer.mlp.up_proj.weight[c], r) for r in sl.mlp.up_proj.weight)]
            assert len(keep) == 100
            drop = [c for c in range(160) if c not in keep]
            layer.mlp.down_proj.weight[:, drop] = 0
    _masked_reference(ref, rep, hd)
    torch.testing.assert_close(_logits(small), _logits(ref), rtol=1e-5, atol=1e-5)


def test_width_keeps_the_most_important_channels():
    from compress.prune.width import prune_width, width_importance

    model = build_model("llama", num_hidden_layers=2)
    imp = width_importance(model, IDS)
    small, _ = prune_width(model, imp, intermediate_size=40)
    best = set(torch.topk(imp.channels[0], 40).indices.tolist())
    up = model.model.layers[0].mlp.up_proj.weight
    kept = {c for c in range(160) if any(torch.equal(up[c], r) for r in small.model.layers[0].mlp.up_proj.weight)}
    assert kept == best


def test_wanda_mask_zeroes_the_lowest_scores_of_each_row():
    w = torch.tensor([[1.0, -4.0, 2.0, 3.0], [0.5, 0.1, -0.2, 9.0]])
    norm = torch.tensor([1.0, 0.1, 1.0, 1.0])  # column 1's input is tiny: its weight matters least
    mask = wanda_mask(w, norm, 0.5)
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]
    big = wanda_mask(torch.randn(7, 40), torch.rand(40), 0.3)
    assert (big.sum(1) == 28).all()  # exactly round(0.3 x 40) = 12 dropped per row


def test_two_four_mask_keeps_two_of_every_four():
    w = torch.randn(6, 32)
    mask = two_four_mask(w, torch.rand(32) + 0.1)
    assert (mask.reshape(6, 8, 4).sum(-1) == 2).all()
    w = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    assert two_four_mask(w, torch.ones(4)).tolist() == [[True, False, True, False]]


@pytest.mark.parametrize("method,target", [("wanda", 0.5), ("2:4", None)])
def test_sparsity_artifact_reports_sparsity_per_layer(llama4, tmp_path, method, target):
    kw = {"sparsity": target} if target else {}
    out = prune(str(llama4), PruneConfig(method=method, **kw, **SMALL), tmp_path / "s")
    rep = read_manifest(out).report
    assert len(rep["sparsity_per_layer"]) == 4 * 7 and all(v == 0.5 for v in rep["sparsity_per_layer"].values())
    assert "llama.cpp gain no speed" in rep["speed"]
    model = load_model(out).model
    w = decoder_layers(model)[1][1].mlp.down_proj.weight
    if method == "2:4":
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    else:
        assert ((w == 0).sum(1) == w.shape[1] // 2).all()
    src = load_model(str(llama4)).model  # embeddings and lm_head stay dense and unchanged
    assert torch.equal(model.model.embed_tokens.weight, src.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, src.lm_head.weight)


def test_targets_larger_than_the_model_are_refused_naming_the_field(run_cli, llama4, tmp_path):
    rc, _, err = run_cli("prune", llama4, "--method", "depth", "--target", "4", "--out", tmp_path / "a")
    assert rc == 2 and "prune.layers: target 4 is not smaller than the model's 4 layers" in err
    rc, _, err = run_cli("prune", llama4, "--method", "width", "--target", "ffn=200", "--out", tmp_path / "b")
    assert rc == 2 and "prune.intermediate_size: 200 is larger than the model's 160" in err
    rc, _, err = run_cli("prune", llama4, "--method", "width", "--target", "heads=3,kv_heads=1", "--out", tmp_path / "c")
    assert rc == 2 and "3 query heads over 1 KV heads" in err
    rc, _, err = run_cli("prune", llama4, "--method", "width", "--target", "fnn=20", "--out", tmp_path / "d")
    assert rc == 2 and "did you mean 'ffn'" in err
    assert not any((tmp_path / n).exists() for n in "abcd")
    with pytest.raises(ConfigError, match="sparsity"):
        PruneConfig(method="wanda", sparsity=1.0)


def test_prune_cli_depth_writes_an_artifact_and_reports(run_cli, llama4, tmp_path):
    rc, out, err = run_cli("prune", llama4, "--method", "depth", "--target", "2", "--samples", "8", "--seq-len", "64",
                           "--eval-tokens", "256", "--out", tmp_path / "d", "--save-config", tmp_path / "p.yaml")
    assert rc == 0, err
    assert "layers dropped" in out and "perplexity" in out
    rc, out, err = run_cli("prune", llama4, "--config", tmp_path / "p.yaml", "--out", tmp_path / "d2", "--json")
    assert rc == 0, err
    assert read_manifest(tmp_path / "d2").content_id == read_manifest(tmp_path / "d").content_id


@pytest.mark.parametrize("method", ["depth", "width"])
def test_pruned_tiny_model_exports_to_gguf_and_onnx(method, tmp_path):
    from test_export_onnx_helpers import peaked

    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx

    src = peaked("llama", num_hidden_layers=3)  # 6 heads of 16 (onnxruntime's attention needs head_dim % 16)
    kw = dict(layers=2) if method == "depth" else dict(intermediate_size=112, num_attention_heads=4,
                                                       num_key_value_heads=2)
    out = prune(str(src), PruneConfig(method=method, **kw, **SMALL), tmp_path / "p")
    g = export_gguf(out, GGUFConfig(qtype="F32"), tmp_path / "gguf")
    assert read_manifest(g.parent).report["validation"]["top1_agreement"] >= 0.99
    o = export_onnx(out, OnnxConfig(precision="fp32"), tmp_path / "onnx")
    assert read_manifest(o.parent).report["layers"] == (2 if method == "depth" else 3)
