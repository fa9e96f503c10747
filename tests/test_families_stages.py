"""Guard tests for the family table beyond quantize/export (tests/test_families.py): every row's tiny model goes
through ``compress distill`` (a few steps, teacher and a one-layer student of the same family with the same
tokenizer) and through ``compress bench`` (accuracy and a short latency, in every runtime the family exports to)."""

from __future__ import annotations

import json

import pytest
from compress.tiny import save_family

from compress.families import FAMILIES, family_for
from compress.manifest import read_manifest

NAMES = [f.name for f in FAMILIES]


@pytest.mark.parametrize("name", NAMES)
def test_every_family_distills_into_a_smaller_student_of_its_own(name, tmp_path, run_cli, one_thread):
    teacher = save_family(tmp_path / "teacher", name)
    student = save_family(tmp_path / "student", name, seed=1, num_hidden_layers=1,
                          **({"layer_types": ["sliding_attention"]} if name == "gemma3" else {}))
    rc, out, err = run_cli("distill", "--teacher", teacher, "--student", student, "--steps", "3", "--seq-len", "32",
                           "--batch", "2", "--warmup", "1", "--eval-every", "3", "--eval-tokens", "128",
                           "--checkpoint-every", "3", "--out", tmp_path / "kd", "--json")
    assert rc == 0, err
    m = read_manifest(tmp_path / "kd")
    assert m.stage == "distill"
    config = json.loads((tmp_path / "kd" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and family_for(config).name == name
    # the student is a model of the family like any other: the exporters take it
    rc, _, err = run_cli("export", tmp_path / "kd", "--format", "gguf", "--qtype", "F32", "--check-tokens", "32",
                         "--out", tmp_path / "g")
    assert rc == 0, err


@pytest.mark.parametrize("name", NAMES)
def test_every_family_is_benched_in_each_runtime_with_accuracy_and_latency(name, tmp_path, run_cli, one_thread):
    ref = save_family(tmp_path / "reference", name)
    arts = {"int8": ["quantize", ref, "--scheme", "int8", "--eval-tokens", "0", "--out", tmp_path / "int8"],
            "q8_0": ["export", ref, "--format", "gguf", "--qtype", "Q8_0", "--check-tokens", "32",
                     "--out", tmp_path / "q8_0"],
            "onnx": ["export", ref, "--format", "onnx", "--qtype", "fp32", "--max-length", "256",
                     "--check-tokens", "32", "--out", tmp_path / "onnx"]}
    for label, args in arts.items():
        rc, _, err = run_cli(*args)
        assert rc == 0, f"{label}: {err}"
    rc, out, err = run_cli("bench", *(f"{k}={tmp_path / k}" for k in arts), "--reference", ref, "--max-tokens", "192",
                           "--window", "64", "--tasks", "sports_understanding", "--mc-limit", "2", "--prompt-tokens",
                           "8", "--new-tokens", "4", "--warmup", "0", "--repetitions", "1", "--no-roofline",
                           "--out", tmp_path / "run")
    assert rc == 0, err
    from compress.harness import read_rows

    rows = {(r["label"], r["runtime"]): r for r in read_rows(tmp_path / "run")}
    assert set(rows) == {("reference", "pytorch"), ("int8", "pytorch"), ("q8_0", "llama.cpp"),
                         ("onnx", "onnxruntime")}, sorted(rows)
    for key, r in rows.items():
        assert r["perplexity"] > 0 and 0 <= r["mc"]["sports_understanding"] <= 1, (key, r)
        assert r["decode_tok_s"] > 0 and r["ttft_s"] > 0 and r["new_tokens"] == 4, (key, r)
    assert rows[("onnx", "onnxruntime")]["kl"] < 1e-5  # fp32: the same model in another runtime
    for key in (("q8_0", "llama.cpp"), ("int8", "pytorch")):
        assert rows[key]["kl"] < 1e-2, (key, rows[key]["kl"])
