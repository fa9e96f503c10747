"""The ONNX export's files (export/onnx/files.py): weights in external data (large ones page-aligned) that
onnxruntime maps instead of copying into its heap (issue #14), re-saves that keep the data file, and a tiny export
that lays its weights out that way and still validates."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from test_export_onnx_helpers import peaked

from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx
from export.onnx.files import ALIGN, ALIGN_MIN, EXTERNAL_DATA, EXTERNAL_MIN, save_model


def _gather_model(table: np.ndarray, small: np.ndarray | None = None) -> onnx.ModelProto:
    """y = table[ids] (+ small): a Gather, which onnxruntime does not repack, so its table stays as loaded."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"])]
    inits = [numpy_helper.from_array(table, "table")]
    out = "rows"
    if small is not None:
        nodes.append(helper.make_node("Add", ["rows", "small"], ["y"]))
        inits.append(numpy_helper.from_array(small, "small"))
        out = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _location(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _run(path, ids) -> np.ndarray:
    s = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"ids": np.asarray(ids, np.int64)})[0]


def test_initializers_of_a_page_or_more_go_to_the_data_file_and_smaller_ones_stay_inline(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 96), dtype=np.float32)  # 115,200 bytes
    small = rng.standard_normal(96, dtype=np.float32)  # 384 bytes
    path = tmp_path / "model.onnx"
    save_model(_gather_model(table, small), path)
    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["table"].data_location == TensorProto.EXTERNAL
    where = _location(inits["table"])
    assert where["location"] == EXTERNAL_DATA and int(where["length"]) == table.nbytes
    assert inits["small"].data_location == TensorProto.DEFAULT and small.nbytes < EXTERNAL_MIN
    assert path.stat().st_size < 4096  # the graph alone
    np.testing.assert_array_equal(_run(path, [3, 299]), table[[3, 299]] + small)
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(loaded["table"], table)


def test_initializers_of_a_mebibyte_or_more_start_on_a_page_and_smaller_ones_are_not_padded(tmp_path):
    rng = np.random.default_rng(1)
    # odd sizes, so that each one ends off a page boundary: the next large one needs padding, a small one none
    sizes = (5001, ALIGN_MIN // 4 + 1, 3001, ALIGN_MIN // 4 + 7)  # float32 elements
    tensors = {f"w{i}": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate(sizes)}
    nodes = [helper.make_node("Identity", [n], [f"{n}/out"]) for n in tensors]
    outs = [helper.make_tensor_value_info(f"{n}/out", TensorProto.FLOAT, None) for n in tensors]
    g = helper.make_graph(nodes, "g", [], outs, [numpy_helper.from_array(v, n) for n, v in tensors.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    save_model(m, tmp_path / "model.onnx")
    inits = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph.initializer
    offsets = [int(_location(t)["offset"]) for t in inits]
    assert offsets[0] == 0 and offsets[1] % ALIGN == 0 and offsets[3] % ALIGN == 0
    assert offsets[1] > 4 * sizes[0] and offsets[2] == offsets[1] + 4 * sizes[1]  # padded before; not after
    s = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for got, want in zip(s.run(None, {}), tensors.values()):
        np.testing.assert_array_equal(got, want)


def test_a_graph_loaded_without_its_data_is_saved_again_pointing_at_the_same_bytes(tmp_path):
    """What the accuracy-level search does: edit attributes of a graph loaded with load_external_data=False."""
    table = np.arange(4096, dtype=np.float32).reshape(64, 64)
    path = tmp_path / "model.onnx"
    save_model(_gather_model(table), path)
    data = (tmp_path / EXTERNAL_DATA).read_bytes()
    m = onnx.load(str(path), load_external_data=False)
    m.doc_string = "edited"
    save_model(m, path)
    assert (tmp_path / EXTERNAL_DATA).read_bytes() == data
    assert onnx.load(str(path), load_external_data=False).doc_string == "edited"
    np.testing.assert_array_equal(_run(path, [0, 63]), table[[0, 63]])


_MEASURE = r"""
import json, sys
import onnxruntime

def status():
    keys = {"RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    return {keys[l.split(":")[0]]: int(l.split()[1]) / 1024 for l in open("/proc/self/status")
            if l.split(":")[0] in keys}

before = status()
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
after = status()
print(json.dumps({k: after[k] - before[k] for k in before}))
"""


def _session_growth(path) -> dict[str, float]:
    """MiB that creating a session of ``path`` adds to a fresh process's RssAnon / RssFile / VmHWM."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_onnxruntime_maps_external_weights_instead_of_copying_them_to_its_heap(tmp_path):
    """A 64 MiB table: inside the protobuf, a session adds about 65 MiB of anonymous memory (and peaks near twice
    that while parsing); in the data file about 1.4 MiB anonymous and the rest as mapped file pages (measured on
    onnxruntime 1.32). Bounds are 4x those margins."""
    table = np.random.default_rng(2).standard_normal((16384, 1024), dtype=np.float32)
    (tmp_path / "inline").mkdir()
    (tmp_path / "external").mkdir()
    onnx.save_model(_gather_model(table), str(tmp_path / "inline" / "model.onnx"))
    save_model(_gather_model(table), tmp_path / "external" / "model.onnx")
    inline = _session_growth(tmp_path / "inline" / "model.onnx")
    external = _session_growth(tmp_path / "external" / "model.onnx")
    assert inline["anon"] > 48, inline  # the measurement sees a heap copy where there is one
    assert external["anon"] < 16, external
    assert external["peak"] < 32, external


def test_a_tiny_export_keeps_its_weights_in_external_data_and_validates(tmp_path):
    path = export_onnx(peaked("llama"), OnnxConfig(precision="int4", lm_head="int8"), tmp_path / "out")
    r = read_manifest(path.parent).report
    data = path.parent / EXTERNAL_DATA
    assert r["onnx_bytes"] == path.stat().st_size + data.stat().st_size
    m = onnx.load(str(path), load_external_data=False)
    big = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    # every tensor of the tiny model is under ALIGN_MIN: stored back to back, no padding
    assert big and sum(int(_location(t)["length"]) for t in big) == data.stat().st_size
    assert all(len(t.raw_data) < EXTERNAL_MIN for t in m.graph.initializer if t.data_location != TensorProto.EXTERNAL)
    tol = r["validation"]["tolerance"]
    for name in ("prefill", "kv_cache"):
        assert r["validation"][name]["top1_agreement"] >= tol["min_top1"]
        assert r["validation"][name]["kl"] <= tol["max_kl"]
