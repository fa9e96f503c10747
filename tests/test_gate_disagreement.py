"""Cross-runtime disagreement is a finding of its own: the runtime off from the others on one artifact
(itself and its exports) is named."""

from __future__ import annotations

import json

from compress.harness.tables import artifact_source, disagreement_table


def row(label, runtime, ppl, artifact):
    return {"label": label, "runtime": runtime, "perplexity": ppl, "artifact": str(artifact)}


def test_the_runtime_that_disagrees_is_named(tmp_path):
    art = tmp_path / "int4"
    art.mkdir()
    rows = [row("int4", "pytorch", 20.0, art), row("int4", "onnxruntime", 20.1, art),
            row("int4", "llama.cpp", 23.0, art), row("reference", "pytorch", 18.0, tmp_path / "ref")]
    cols, body = disagreement_table(rows)
    assert [(b[0], b[1]) for b in body] == [("int4", "llama.cpp")]
    assert "disagrees with int4 (pytorch), int4 (onnxruntime)" in body[0][-1] and body[0][4] == "+14.4%"


def test_agreeing_runtimes_and_lone_rows_are_no_finding(tmp_path):
    rows = [row("a", "pytorch", 20.0, tmp_path / "a"), row("a", "onnxruntime", 20.2, tmp_path / "a"),
            row("b", "pytorch", 30.0, tmp_path / "b")]
    assert disagreement_table(rows) is None


def test_an_export_groups_with_its_source_artifact(tmp_path):
    src, exp = tmp_path / "int4", tmp_path / "gguf"
    src.mkdir()
    exp.mkdir()
    (exp / "manifest.json").write_text(json.dumps({
        "stage": "export-gguf", "config": {}, "input_id": None, "content_id": "x", "versions": {},
        "git_revision": None, "wall_time_s": 0, "report": {"input": str(src)}, "files": {}, "created": "",
        "schema": 1}))
    assert artifact_source(str(exp)) == str(src.resolve())
    rows = [row("int4", "pytorch", 20.0, src), row("q4_0", "llama.cpp", 25.0, exp)]
    cols, body = disagreement_table(rows)
    assert {b[0] for b in body} == {"int4", "q4_0"}  # two rows: both named, nothing says which is right


def _export(folder, src, qtype, requantized=False):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "stage": "export-gguf", "config": {"qtype": qtype}, "input_id": None, "content_id": "x", "versions": {},
        "git_revision": None, "wall_time_s": 0, "report": {"input": str(src), "requantized": requantized},
        "files": {}, "created": "", "schema": 1}))
    return folder


def test_two_quants_of_one_float_model_are_two_artifacts_not_a_disagreement(tmp_path):
    """llama.cpp's Q4_K_M and Q4_0 made from the same float model differ in quality, not in runtime."""
    model = tmp_path / "model"
    model.mkdir()
    q4km, q40 = _export(tmp_path / "q4km", model, "Q4_K_M"), _export(tmp_path / "q40", model, "Q4_0")
    f16, req = _export(tmp_path / "f16", model, "F16"), _export(tmp_path / "req", model, "auto", requantized=True)
    assert artifact_source(str(q4km)) == str(q4km.resolve()) != artifact_source(str(q40))
    assert artifact_source(str(f16)) == str(model.resolve())  # float: the model's own weights
    assert artifact_source(str(req)) == str(req.resolve())  # re-rounded: its own weights
    rows = [row("model", "pytorch", 20.0, model), row("q4_k_m", "llama.cpp", 20.4, q4km),
            row("q4_0", "llama.cpp", 25.0, q40)]
    assert disagreement_table(rows) is None
