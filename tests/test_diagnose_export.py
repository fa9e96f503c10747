"""diagnose on exports: a GGUF with a deliberately corrupted tensor is blamed on the export, and the tensor
is named; a faithful export is blamed on the quantizer."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from test_diagnose import one_bad_layer

_SPEC = importlib.util.spec_from_file_location("gate", Path(__file__).resolve().parents[1] / "benchmarks" / "gate.py")
_gate = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_gate)
corrupt_gguf_tensor = _gate.corrupt_gguf_tensor  # the gate's own fault: benchmarks/gate.py --corrupt

CORRUPT = "blk.0.attn_v.weight"  # model.layers.0.self_attn.v_proj


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from export.gguf import GGUFConfig, export_gguf

    root = tmp_path_factory.mktemp("diagx")
    ref, bad = one_bad_layer(root)
    good = root / "int4"  # the artifact one_bad_layer coarsened a copy of
    gguf = export_gguf(str(good), GGUFConfig(qtype="Q4_0", check_tokens=64), root / "gguf").parent
    broken = root / "gguf-broken"
    shutil.copytree(gguf, broken)
    corrupt_gguf_tensor(broken, CORRUPT)
    return gguf, broken


def test_corrupted_export_tensor_is_blamed_on_the_export_and_named(exports):
    from compress.diagnose import DiagnoseConfig, diagnose, headline

    r = diagnose(exports[1], DiagnoseConfig(tokens=128, threads=1, granularity="block"))
    ex = r["export"]
    assert ex["blame"] == "export" and ex["runtime"] == "llama.cpp"
    assert ex["kl_export"] > ex["kl_quantizer"]
    differs = ex["tensors"]["differs"]
    assert [d["gguf"] for d in differs] == [CORRUPT]
    assert differs[0]["tensor"] == "model.layers.0.self_attn.v_proj.weight"
    assert "the export" in headline(r) and "model.layers.0.self_attn.v_proj" in headline(r)


def test_faithful_export_is_blamed_on_the_quantizer(exports):
    from compress.diagnose import DiagnoseConfig, diagnose

    r = diagnose(exports[0], DiagnoseConfig(tokens=128, threads=1, granularity="block"))
    assert r["export"]["blame"] == "quantizer"
    assert r["export"]["tensors"]["differs"] == []


def test_onnx_export_is_compared_with_its_artifact_in_onnxruntime(exports, tmp_path):
    from compress.diagnose import DiagnoseConfig, diagnose
    from export.onnx import OnnxConfig, export_onnx

    q4 = exports[0].parent / "int4"
    onnx = export_onnx(str(q4), OnnxConfig(precision="int4", max_length=512, check_tokens=32), tmp_path / "onnx").parent
    r = diagnose(onnx, DiagnoseConfig(tokens=128, threads=1, granularity="block"))
    ex = r["export"]
    assert ex["runtime"] == "onnxruntime" and ex["blame"] == "quantizer" and "tensors" not in ex
    assert ex["kl_export"] < 0.5 * ex["kl_quantizer"]
