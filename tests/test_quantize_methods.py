"""GPTQ and AWQ against round-to-nearest, on layer output error (what both methods minimize)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from compress.errors import IncompatibleLayerError
from compress.quantize.awq import awq_layer, norm_offset
from compress.quantize.calibrate import capture, collect_stats, layer_forward
from compress.quantize.config import QuantConfig
from compress.quantize.gptq import gptq, inverse_hessian_factor
from compress.quantize.grid import Grid, rtn
from compress.quantize.layers import make_plan


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors run on one thread


def _correlated(n=2048, d=128, seed=0):
    """Inputs whose channels are strongly correlated and unevenly scaled, like real activations."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g)
    mix = torch.randn(16, d, generator=g)
    scale = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]
    return (z @ mix + 0.1 * torch.randn(n, d, generator=g)) * scale


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rtn_on_correlated_inputs(act_order):
    x = _correlated()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    h = x.T @ x / x.shape[0]
    grid = Grid(4, 32, True)
    qt, damp = gptq(w, h, grid, act_order=act_order)
    assert damp == 0.01
    err_gptq = float(((x @ (qt.dequantize() - w).T) ** 2).mean())
    err_rtn = float(((x @ (rtn(w, grid).dequantize() - w).T) ** 2).mean())
    assert err_gptq < 0.7 * err_rtn
    # static groups: one scale per (row, natural group), integers in natural column order
    assert qt.scale.shape == (64, 4) and qt.q.shape == (64, 128)


def test_cholesky_failure_raises_damping_and_logs_it(caplog):
    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    eig = torch.full((d,), 10.0)
    eig[0] = -2.0  # indefinite: 0.01 * mean(diag) ~ 0.1 cannot fix it, 1.0 cannot, 10 can
    h = q @ torch.diag(eig) @ q.T
    with caplog.at_level(logging.WARNING, logger="compress.quantize.gptq"):
        _, used = inverse_hessian_factor(h, 0.01, name="model.layers.3.mlp.up_proj")
    assert used > 0.01
    assert "model.layers.3.mlp.up_proj: Hessian Cholesky failed with damping 0.01" in caplog.text


def test_hopeless_hessian_is_a_typed_error_naming_the_layer():
    h = -torch.eye(8)  # negative mean diagonal: damping only makes it worse
    with pytest.raises(IncompatibleLayerError, match="model.layers.0.self_attn.q_proj: Hessian is not positive"):
        inverse_hessian_factor(h, 0.01, name="model.layers.0.self_attn.q_proj")


@pytest.fixture(params=["llama", "gemma3"])
def tiny_layer(request, tiny_llama_dir, tiny_gemma3_dir):
    """Layer 0 of a tiny model, its calibration inputs and kwargs, with outlier input channels."""
    from transformers import AutoModelForCausalLM

    folder = tiny_llama_dir if request.param == "llama" else tiny_gemma3_dir
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():  # real models have a few large activation channels: AWQ's premise
        norm = model.model.layers[0].input_layernorm
        norm.weight[:4] += 6.0
        model.model.layers[0].post_attention_layernorm.weight[5:9] += 4.0
    ids = torch.randint(3, 300, (6, 48), generator=torch.Generator().manual_seed(0))
    x, kwargs = capture(model, ids, batch=3)
    plan = make_plan(model, QuantConfig(scheme="int4-awq", group_size=32))
    return model, plan.by_layer()[0], x, kwargs[0]


@torch.no_grad()
def _outputs(layer, x, kwargs):
    return torch.cat([layer_forward(layer, x[a:a + 3], kwargs) for a in range(0, x.shape[0], 3)])


def test_awq_layer_output_error_is_not_above_rtn(tiny_layer):
    model, targets, x, kwargs = tiny_layer
    layer = model.model.layers[0]
    ref = _outputs(layer, x, kwargs)
    rtn_layer = copy.deepcopy(layer)
    with torch.no_grad():
        for name, t in targets.items():
            lin = rtn_layer.get_submodule(name.split(".", 3)[3])
            lin.weight.copy_(rtn(lin.weight, t.grid).dequantize())
    err_rtn = float(((_outputs(rtn_layer, x, kwargs) - ref) ** 2).mean())
    stats = collect_stats(layer, targets, x, kwargs, batch=3)
    qts, info = awq_layer(layer, targets, stats, x[:1], kwargs, head_dim=24, n_grid=10)
    assert set(qts) == set(targets) and len(info) >= 3  # norm->qkv, norm->gate/up, up->down at least
    with torch.no_grad():
        for name, qt in qts.items():
            targets[name].module.weight.copy_(qt.dequantize())
    err_awq = float(((_outputs(layer, x, kwargs) - ref) ** 2).mean())
    assert err_awq <= err_rtn


def test_awq_folds_leave_the_float_layer_unchanged(tiny_layer):
    """Folding s into norms, v_proj and up_proj is exact: with rounding undone the layer computes the
    same outputs (Gemma's (1 + w) norm included)."""
    model, targets, x, kwargs = tiny_layer
    layer = model.model.layers[0]
    before = _outputs(layer, x, kwargs)
    stats = collect_stats(layer, targets, x, kwargs, batch=3)
    _, info = awq_layer(layer, targets, stats, x[:1], kwargs, head_dim=24, n_grid=10)
    assert any(v["ratio"] > 0 for v in info.values())  # some scale is not 1, so the folds matter
    after = _outputs(layer, x, kwargs)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


def test_norm_offset_tells_gemma_from_llama():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert norm_offset(LlamaRMSNorm(8)) == 0.0
    assert norm_offset(Gemma3RMSNorm(8)) == 1.0


def test_clip_search_never_raises_a_groups_output_error():
    from compress.quantize.clip import clip_fit

    x = _correlated(d=128)
    h = x.T @ x / x.shape[0]
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2)) * 0.05
    w[:, 7] *= 8  # an outlier weight per row: clipping it should pay off somewhere
    for grid in (Grid(4, 32, True), Grid(4, 32, False)):
        scale, zero = clip_fit(w, h, grid)
        plain = rtn(w, grid)

        def group_err(deq):
            e = (deq - w).reshape(32, 4, 32)
            blocks = torch.stack([h[k * 32:(k + 1) * 32, k * 32:(k + 1) * 32] for k in range(4)])
            return torch.einsum("ogi,gij,ogj->og", e, blocks, e)

        clipped = group_err(grid.dequantize(grid.quantize(w, scale, zero), scale, zero))
        unclipped = group_err(plain.dequantize())
        assert bool((clipped <= unclipped * (1 + 1e-5)).all())
        assert float(clipped.sum()) < float(unclipped.sum())
