"""SmolLM2-135M through prune (depth and width) and a few distillation steps, from the CLI.

Brief on purpose (tiny calibration, 2 training steps): the measured recovery lives in
benchmarks/RESULTS.md (benchmarks/bench_prune_distill.py).
"""

from __future__ import annotations

import json

import pytest

from compress.manifest import read_manifest
from compress.models import load_model

pytestmark = pytest.mark.integration
QUICK = ["--samples", "4", "--seq-len", "64", "--eval-tokens", "0"]


def test_smollm2_depth_and_width_prune_then_distill_two_steps(run_cli, tmp_path):
    rc, out, err = run_cli("prune", "smollm2-135m", "--method", "depth", "--target", "26", *QUICK,
                           "--out", tmp_path / "d", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert len(rep["layers_kept"]) == 26 and len(rep["layers_dropped"]) == 4 and rep["params_after"] < rep["params_before"]
    rc, out, err = run_cli("prune", "smollm2-135m", "--method", "width", "--target", "ffn=1024,heads=6,kv_heads=2",
                           *QUICK, "--out", tmp_path / "w", "--json")
    assert rc == 0, err
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == \
        (1024, 6, 2, 64)
    assert load_model(tmp_path / "w").model.model.layers[0].self_attn.q_proj.weight.shape == (384, 576)
    rc, out, err = run_cli("distill", "--teacher", "smollm2-135m", "--student", tmp_path / "d", "--steps", "2",
                           "--seq-len", "64", "--batch", "1", "--eval-tokens", "0", "--threads", "2",
                           "--out", tmp_path / "kd")
    assert rc == 0, err
    r = read_manifest(tmp_path / "kd").report
    assert r["steps"] == 2 and len(r["loss"]) == 2 and all(v > 0 for v in r["loss"])
