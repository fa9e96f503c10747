"""ONNX export manifests name their input (as GGUF's do), so bench finds the reference of an ONNX artifact
without ``--reference`` even after its bundled source was fetched again (a new content id)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.fetch import FetchConfig, cached_folder
from compress.harness import BenchConfig, bench, read_rows
from compress.harness.targets import resolve_reference, resolve_target
from compress.manifest import ArtifactWriter, read_manifest
from export.onnx import OnnxConfig, export_onnx

BUNDLED_NAME = "smollm2-135m"
SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}  # GroupQueryAttention: head_dim 16


def _fake_fetch(gguf_id: str) -> Path:
    """A tiny model in the bundled model's cache folder, as ``compress fetch`` leaves it (stage fetch);
    another ``gguf_id`` stands for a re-fetch from a new package: same name, new content id."""
    from compress.tiny import build_model, build_tokenizer

    with ArtifactWriter(cached_folder(BUNDLED_NAME), stage="fetch", config=FetchConfig(name=BUNDLED_NAME),
                        input_id=gguf_id, force=True) as art:
        build_model("llama", seed=0, **SHAPE).save_pretrained(art.path)
        build_tokenizer(add_bos=False).save_pretrained(art.path)
    return cached_folder(BUNDLED_NAME)


def test_onnx_export_of_a_refetched_bundled_model_still_leads_bench_to_its_reference(tmp_path, one_thread):
    first = read_manifest(_fake_fetch("gguf:package-1")).content_id
    out = export_onnx(BUNDLED_NAME, OnnxConfig(precision="fp32", max_length=128), tmp_path / "onnx").parent
    report = read_manifest(out).report
    assert report.get("input") == BUNDLED_NAME and report.get("input_stage") == "fetch"

    assert read_manifest(_fake_fetch("gguf:package-2")).content_id != first  # the export's input id is stale now
    target = resolve_target(str(out))
    assert target.source == BUNDLED_NAME
    assert resolve_reference([target], None) == BUNDLED_NAME
    run = bench(BenchConfig(latency=False, tasks=(), max_tokens=256, window=128), [f"onnx={out}"], tmp_path / "run")
    assert read_manifest(run).report["reference"] == BUNDLED_NAME
    assert {(r["label"], r["runtime"]) for r in read_rows(run)} == {(BUNDLED_NAME, "pytorch"), ("onnx", "onnxruntime")}


@pytest.mark.parametrize("fmt", ["onnx", "gguf"])
def test_export_from_a_relative_path_records_it_absolute(fmt, tmp_path, monkeypatch, one_thread):
    from export.gguf import GGUFConfig, export_gguf

    folder = _fake_fetch("gguf:package-1")
    monkeypatch.chdir(folder.parent)
    if fmt == "onnx":
        out = export_onnx(folder.name, OnnxConfig(precision="fp32", max_length=128), tmp_path / "onnx").parent
    else:
        out = export_gguf(folder.name, GGUFConfig(qtype="F32", check_tokens=32), tmp_path / "gguf").parent
    report = read_manifest(out).report
    assert report["input"] == str(folder) and report["input_stage"] == "fetch"
    monkeypatch.chdir(tmp_path)  # bench runs elsewhere: it follows the path through the fetch manifest
    assert resolve_target(str(out)).source == BUNDLED_NAME
