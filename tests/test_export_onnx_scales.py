"""float16 scales in the ONNX export (issue 12: quality per byte of the file users ship): the artifact's scales
are float16 values, so MatMulNBits / GatherBlockQuantized store them as float16 (exact) where the node's
activations fit float16; the file shrinks by two bytes per scale and still holds exactly the artifact's
integers and scales; a node whose activations reach float16's range keeps float32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_export_onnx_helpers import grid_artifact, peaked

from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx
from export.onnx.scales import SAFE_MAX, half_scale_nodes, half_scales

pytestmark = pytest.mark.usefixtures("one_thread")


def _scaled_nodes(path):
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    return m, inits, [n for n in m.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]


def _bits(node):
    return next((a.i for a in node.attribute if a.name == "bits"), 4)


@pytest.mark.parametrize("scale_type", ["auto", "float16"])
def test_float16_scales_hold_the_artifact_exactly_in_a_smaller_file(tmp_path, scale_type):
    # int4 attention, int8 MLP and table: auto puts float16 on the 4-bit nodes only, float16 on every node
    art = grid_artifact(peaked("llama"), tmp_path / "q", {r"(q|k|v|o)_proj$": (4, 32, True), r"_proj$": (8, 32, True)},
                        embeddings=(8, 32, True))
    half = export_onnx(art, OnnxConfig(scale_type=scale_type), tmp_path / "half")
    full = export_onnx(art, OnnxConfig(scale_type="float32"), tmp_path / "full")
    m16, i16, n16 = _scaled_nodes(half)
    m32, i32, n32 = _scaled_nodes(full)
    assert n16 and [n.name for n in n16] == [n.name for n in n32]
    want = {n.name for n in n16 if scale_type == "float16" or _bits(n) == 4}
    assert want and (scale_type == "float16" or len(want) < len(n16))
    saved_values, seen = 0, set()
    for a, b in zip(n16, n32):
        s16, s32 = (numpy_helper.to_array(i[n.input[2]]) for i, n in ((i16, a), (i32, b)))
        assert s32.dtype == np.float32 and s16.dtype == (np.float16 if a.name in want else np.float32), a.name
        np.testing.assert_array_equal(s16.astype(np.float32), s32, err_msg=a.name)  # the same scales, exactly
        # and the same integers (a shared table's lm_head reads them through a Reshape of the Gather's)
        q = 0 if a.op_type == "GatherBlockQuantized" else 1
        if a.input[q] in i16:
            np.testing.assert_array_equal(numpy_helper.to_array(i16[a.input[q]]), numpy_helper.to_array(i32[b.input[q]]))
        if a.name in want and a.input[2] not in seen:
            saved_values += s32.size
            seen.add(a.input[2])
    # a float16 node runs on float16 activations: its input cast to float16 and its output back to float32
    producers = {o: n for n in m16.graph.node for o in n.output}
    consumers = {i: n for n in m16.graph.node for i in n.input}
    for n in n16:
        if n.op_type == "MatMulNBits":
            assert (producers[n.input[0]].op_type == "Cast") == (n.name in want), n.name
        assert (consumers[n.output[0]].op_type == "Cast") == (n.name in want), n.name
    r = read_manifest(half.parent).report
    assert r["scales"]["type"] == scale_type and r["scales"]["float16_nodes"] == len(want)
    assert r["scales"]["float32_kept"] == {}
    assert r["scales"]["float32_8bit_nodes"] == len(n16) - len(want)
    assert read_manifest(full.parent).report["scales"]["float16_nodes"] == 0
    # two bytes a scale fewer; on this tiny model the casts' graph bytes take back part of that
    saved = read_manifest(full.parent).report["onnx_bytes"] - r["onnx_bytes"]
    assert 0.3 * 2 * saved_values < saved <= 2 * saved_values
    assert r["validation"]["prefill"]["top1_agreement"] >= 0.9


def test_a_node_whose_activations_reach_float16_s_range_keeps_float32_scales():
    k, n = 32, 16
    b = numpy_helper.from_array(np.zeros((n, 1, 16), np.uint8), "B")
    s = numpy_helper.from_array(np.ones((n, 1), np.float32), "S")
    s2 = numpy_helper.from_array(np.ones((n, 1), np.float32), "S2")
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "S"], ["y1"], name="layers.0.attn.o_proj", domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=32),
             helper.make_node("MatMulNBits", ["x", "B", "S2"], ["y2"], name="layers.0.mlp.down_proj",
                              domain="com.microsoft", K=k, N=n, bits=4, block_size=32)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, n]) for y in ("y1", "y2")], [b, s, s2])
    model = helper.make_model(g)
    wmap = {"model.layers.0.self_attn.o_proj": {"node": "layers.0.attn.o_proj"},
            "model.layers.0.mlp.down_proj": {"node": "layers.0.mlp.down_proj"}}
    # an 8-bit node is no candidate under auto (bits=(4,)), whatever its range
    assert half_scale_nodes(model, wmap, {"model.layers.0.self_attn.o_proj": 12.0}, bits=(8,)) == (set(), {})
    ok, kept = half_scale_nodes(model, wmap, {"model.layers.0.self_attn.o_proj": 12.0,
                                              "model.layers.0.mlp.down_proj": SAFE_MAX * 4})
    assert ok == {"layers.0.attn.o_proj"} and kept == {"layers.0.mlp.down_proj": SAFE_MAX * 4}
    # a module the measurement never reached is not assumed safe
    ok, kept = half_scale_nodes(model, wmap, {"model.layers.0.self_attn.o_proj": 12.0})
    assert ok == {"layers.0.attn.o_proj"} and kept["layers.0.mlp.down_proj"] == float("inf")
    assert half_scales(model, ok) == {"float16": 1, "scales_converted": 1}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["S"].dtype == np.float16 and inits["S2"].dtype == np.float32
    # scales that are not float16 values are refused: this pass must not round what the artifact holds
    bad = helper.make_model(helper.make_graph(
        [helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], name="m", domain="com.microsoft", K=k, N=n, bits=4,
                          block_size=32)], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [b, numpy_helper.from_array(np.full((n, 1), 0.1, np.float32), "S")]))
    with pytest.raises(ValueError, match="m: scales S are not float16 values"):
        half_scales(bad, {"m"})
