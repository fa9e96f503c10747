"""The bundled GGUFs as export inputs (issue 13 point 5, integration tier: real files, minutes).

A bundled GGUF named by its path resolves to the bundled model's own fetch (the same import, the same digest):
nothing is imported twice, and bench's lineage (input id = the fetch's content id) still finds the model.
"""

from __future__ import annotations

import pytest

from compress.bundled import bundled_gguf
from compress.fetch import cached_folder, ensure_fetched, import_gguf
from compress.manifest import read_manifest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name,own,other", [("smollm2-135m", "Q4_1", "Q8_0"), ("gemma3-270m", "Q4_K_M", "Q8_0")])
def test_bundled_gguf_file_requantizes_through_its_fetch_and_its_own_type_is_refused(name, own, other, tmp_path,
                                                                                     run_cli):
    gguf = bundled_gguf(name)
    ensure_fetched(name)
    assert import_gguf(gguf) == cached_folder(name)
    rc, _, err = run_cli("export", gguf, "--format", "gguf", "--qtype", own, "--out", tmp_path / "same")
    assert rc == 2 and f"is already a {own} GGUF" in err and not (tmp_path / "same").exists(), err
    rc, _, err = run_cli("export", gguf, "--format", "gguf", "--qtype", other, "--out", tmp_path / "o")
    assert rc == 0, err
    m = read_manifest(tmp_path / "o")
    assert m.input_id == read_manifest(cached_folder(name)).content_id and m.report["input_stage"] == "fetch"
    assert m.report["validation"]["top1_agreement"] >= m.report["validation"]["min_top1"]
    assert m.report["tokenizer"]["tokenizer_source"] == f"copied from {gguf.name}"


def test_bundled_smollm2_gguf_file_exports_to_onnx(tmp_path, run_cli):
    gguf = bundled_gguf("smollm2-135m")
    # fp32: onnxruntime's own int4 RTN of the float SmolLM2 fails validation (top-1 67% < 80%); the file resolves
    # to the same fetch folder as the name smollm2-135m, so that is not about the GGUF input
    rc, _, err = run_cli("export", gguf, "--format", "onnx", "--qtype", "fp32", "--out", tmp_path / "onnx")
    assert rc == 0, err
    m = read_manifest(tmp_path / "onnx")
    assert m.input_id == read_manifest(ensure_fetched("smollm2-135m")).content_id
    assert {"prefill", "kv_cache"} <= set(m.report["validation"])
