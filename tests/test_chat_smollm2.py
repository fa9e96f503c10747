"""Integration: the demo's two chat artifacts of SmolLM2-135M, made by `compress run`, answer the capital question.

A Q4_K_M GGUF (llama.cpp's k-quants with an importance matrix) and an int4 ONNX (GPTQ integers in
MatMulNBits) both answer "What is the capital of France?" with Paris, greedily, through `compress chat --once`.
"""

from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory):
    from compress.cli import main

    tmp = tmp_path_factory.mktemp("demo")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "smollm2-135m", "work_dir": str(tmp / "work"),
        "quantize": [{"name": "int4", "scheme": "int4-gptq", "group_size": 32, "samples": 32, "seq_len": 256,
                      "eval_tokens": 0}],
        "export": [{"name": "q4_k_m", "format": "gguf", "from": "model", "qtype": "Q4_K_M"},
                   {"name": "onnx-int4", "format": "onnx", "from": "int4", "precision": "int4"}],
    }))
    assert main(["run", str(recipe)]) == 0
    return tmp / "work"


@pytest.mark.parametrize("export", ["q4_k_m", "onnx-int4"])
def test_chat_once_answers_the_capital_of_france(export, demo_exports, run_cli):
    rc, out, err = run_cli("chat", demo_exports / f"export-{export}", "--once", QUESTION, "--max-new-tokens", "48")
    assert rc == 0, err
    assert "Paris" in out, out
    assert "tok/s" in err and "RSS" in err


def test_chat_with_the_phone_profile(demo_exports, run_cli):
    rc, out, err = run_cli("chat", demo_exports / "export-q4_k_m", "--profile", "phone", "--once", QUESTION,
                           "--max-new-tokens", "48")
    assert rc == 0, err
    assert "Paris" in out
