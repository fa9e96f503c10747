"""ONNX export of tiny Llama and Gemma3: every precision validates, generation through the KV cache equals
PyTorch's, the artifact's integers reach MatMulNBits unchanged, and a pruned student exports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper
from test_export_onnx_helpers import peaked, prune_llama, rememorize, rtn_artifact, unpack

from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx
from export.onnx.graph import unpack_nbits


def _load(path):
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    wmap = json.loads({p.key: p.value for p in m.metadata_props}["compress.weight_map"])
    return m, inits, nodes, wmap


def _attr(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fp32_export_matches_pytorch_on_prefill_and_kv_cache(arch, tmp_path):
    path = export_onnx(peaked(arch), OnnxConfig(precision="fp32"), tmp_path / "out")
    m = read_manifest(path.parent)
    assert m.stage == "export-onnx" and m.report["precision"] == "fp32"
    for f in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (path.parent / f).is_file(), f
    v = m.report["validation"]
    for name in ("prefill", "kv_cache"):
        assert v[name]["top1_agreement"] == 1.0
        assert v[name]["max_abs"] < 1e-3 and v[name]["kl"] < 1e-6
    assert v["tolerance"]["min_top1"] == 0.999
    ops = m.report["ops"]
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] >= 3
    if arch == "gemma3":
        assert ops["FastGelu"] == 2 and ops["SimplifiedLayerNormalization"] >= 5  # q/k norms and post norms


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("precision,method,op", [("fp16", "nbits", "Cast"), ("int8", "nbits", "MatMulNBits"),
                                               ("int8", "dynamic", "MatMulInteger"), ("int4", "nbits", "MatMulNBits")])
def test_every_precision_of_a_float_model_validates(arch, precision, method, op, tmp_path):
    path = export_onnx(peaked(arch), OnnxConfig(precision=precision, int8_method=method), tmp_path / "out")
    r = read_manifest(path.parent).report
    tol = r["validation"]["tolerance"]
    for name in ("prefill", "kv_cache"):
        assert r["validation"][name]["top1_agreement"] >= tol["min_top1"]
        assert r["validation"][name]["kl"] <= tol["max_kl"]
    m, inits, nodes, _ = _load(path)
    types = {n.op_type for n in m.graph.node}
    assert op in types or (precision == "int8" and "DynamicQuantizeMatMul" in types), types
    if precision == "fp16":
        w = inits["layers.0.attn.qkv_proj.weight"]
        assert w.data_type == onnx.TensorProto.FLOAT16
    if precision in ("int8", "int4"):  # our int8 for the output projection
        assert r["plan"]["lm_head"] == "int8 (export-rtn)" and _attr(nodes["lm_head"], "bits") == 8
    if op == "MatMulNBits":  # onnxruntime's RTN for the decoder
        assert r["plan"]["post_quantizer"] == "ort-nbits"
        bits = {_attr(n, "bits") for n in m.graph.node if n.op_type == "MatMulNBits" and n.name != "lm_head"}
        assert bits == {int(precision[3:])}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_32_tokens_through_the_kv_cache_equal_pytorch(arch, tmp_path):
    from runtimes import DeviceProfile, Runtime, get_runtime

    folder = peaked(arch)
    path = export_onnx(folder, OnnxConfig(precision="fp32"), tmp_path / "out")
    onnx_rt, torch_rt = get_runtime("onnxruntime"), get_runtime("pytorch")
    assert isinstance(onnx_rt, Runtime) and onnx_rt.version() == onnxruntime.__version__
    onnx_rt.load(path.parent, DeviceProfile(threads=1))
    torch_rt.load(folder, DeviceProfile(threads=1))
    prompt = onnx_rt.tokenizer("It was the whale")["input_ids"]
    got, want = onnx_rt.generate(prompt, 32), torch_rt.generate(prompt, 32)
    assert len(got.new_ids) == 32 and got.time_to_first_token_s > 0 and got.total_s > got.time_to_first_token_s
    assert got.new_ids == want.new_ids
    np.testing.assert_allclose(onnx_rt.logits(prompt), torch_rt.logits(prompt), atol=1e-3)
    np.testing.assert_allclose(onnx_rt.logits(prompt, last=2), torch_rt.logits(prompt)[-2:], atol=1e-3)


@pytest.mark.parametrize("arch,symmetric", [("llama", True), ("llama", False), ("gemma3", True)])
def test_int4_integers_in_matmulnbits_equal_the_artifacts(arch, symmetric, tmp_path):
    from safetensors.numpy import load_file

    art = rtn_artifact(peaked(arch), tmp_path / "q4", bits=4, group=32, symmetric=symmetric)
    path = export_onnx(art, OnnxConfig(precision="int4", lm_head="float", accuracy_level=0), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["integers"] == "artifact" and r["plan"]["post_quantizer"] is None
    assert r["validation"]["tolerance"]["min_top1"] == 0.98  # the target for the artifact's own integers
    assert r["validation"]["prefill"]["max_abs"] < 0.02  # float compute: PyTorch's numbers up to summation order
    raw = load_file(str(art / "model.safetensors"))
    layers = json.loads((art / "quantization.json").read_text())["layers"]
    _, inits, nodes, wmap = _load(path)
    assert len(layers) == 14
    for name in layers:
        node = nodes[wmap[name]["node"]]
        a, b = wmap[name]["rows"]
        n, k = _attr(node, "N"), _attr(node, "K")
        assert _attr(node, "bits") == 4 and _attr(node, "block_size") == 32
        q = unpack_nbits(numpy_helper.to_array(inits[node.input[1]]), 4, n, k)[a:b]
        want = unpack({"qweight": raw[f"{name}.qweight"]}, 4)
        np.testing.assert_array_equal(q, want, err_msg=name)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)[a:b]
        np.testing.assert_array_equal(scales, raw[f"{name}.scales"].astype(np.float32), err_msg=name)
        if not symmetric:
            zp = numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1)[a:b]
            zeros = np.empty((b - a, zp.shape[1] * 2), np.uint8)
            zeros[:, 0::2], zeros[:, 1::2] = zp & 0x0F, zp >> 4
            np.testing.assert_array_equal(zeros[:, :k // 32], raw[f"{name}.zeros"], err_msg=name)
        else:
            assert node.input[3] == ""  # the default zero point 8 is ours


def test_int8_artifact_integers_go_into_8_bit_matmulnbits(tmp_path):
    from safetensors.numpy import load_file

    art = rtn_artifact(peaked("llama"), tmp_path / "q8", bits=8, group=32, symmetric=True)
    path = export_onnx(art, OnnxConfig(precision="int8"), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["linears"] == {"nbits-int8": 14} and r["plan"]["post_quantizer"] is None
    raw = load_file(str(art / "model.safetensors"))
    _, inits, nodes, wmap = _load(path)
    name = "model.layers.1.mlp.down_proj"
    node = nodes[wmap[name]["node"]]
    q = unpack_nbits(numpy_helper.to_array(inits[node.input[1]]), 8, _attr(node, "N"), _attr(node, "K"))
    np.testing.assert_array_equal(q.astype(np.int16) - 128, raw[f"{name}.qweight"].astype(np.int16))


def test_quantized_tied_embeddings_are_stored_once_for_gather_and_lm_head(tmp_path):
    art = rtn_artifact(peaked("gemma3"), tmp_path / "q4e", bits=4, group=32, embeddings=True)
    path = export_onnx(art, OnnxConfig(precision="int4", lm_head="auto"), tmp_path / "out")
    r = read_manifest(path.parent).report
    assert r["plan"]["shared_embeddings"] and r["plan"]["embeddings"] == "int4 (artifact)"
    assert r["plan"]["integers"] == "artifact"
    m, inits, nodes, _ = _load(path)
    gather = nodes["embed_tokens"]
    assert gather.op_type == "GatherBlockQuantized"
    reshape = nodes["lm_head/shared_qweight"]
    assert reshape.input[0] == gather.input[0]  # MatMulNBits reads the gather table, not a copy
    assert nodes["lm_head"].input[1] == reshape.output[0]
    assert nodes["lm_head"].input[2] == gather.input[2]  # and its scales


def test_pruned_student_with_uneven_shapes_exports(tmp_path):
    pruned = prune_llama(peaked("llama"), tmp_path / "pruned", keep_layers=[1], n_ff=112, heads_per_kv=2)
    src = rememorize(pruned, tmp_path / "student")
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["num_attention_heads"] == 4 and cfg["intermediate_size"] == 112
    for precision in ("fp32", "int4"):
        path = export_onnx(src, OnnxConfig(precision=precision, block_size=16), tmp_path / precision)
        r = read_manifest(path.parent).report
        assert r["layers"] == 1 and r["validation"]["prefill"]["positions"] == 64
        _, _, nodes, _ = _load(path)
        gqa = nodes["layers.0.attn.gqa"]
        assert _attr(gqa, "num_heads") == 4 and _attr(gqa, "kv_num_heads") == 2
    assert r["plan"]["post_quantizer"] == "ort-nbits"
