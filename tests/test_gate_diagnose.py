"""The gate with per-row tolerances from the baseline's spread, and a diagnosis naming the layer on failure:
it passes an identical run and fails the run whose GGUF has a corrupted tensor, naming that tensor."""

from __future__ import annotations

import json
import shutil

import pytest

from test_diagnose import one_bad_layer
from test_diagnose_export import CORRUPT, corrupt_gguf_tensor

MC_LIMIT = 10


def bench_cfg(reference):
    from compress.harness import BenchConfig

    return BenchConfig(reference=str(reference), data="moby-dick", max_tokens=256, window=128,
                       tasks=("sports_understanding",), mc_limit=MC_LIMIT, latency=False, roofline=False, profile="laptop")


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    from compress.harness import bench, write_baseline
    from export.gguf import GGUFConfig, export_gguf

    root = tmp_path_factory.mktemp("gate")
    ref, _ = one_bad_layer(root)
    q4 = root / "int4"
    gguf = export_gguf(str(q4), GGUFConfig(qtype="Q4_0", check_tokens=64), root / "gguf").parent
    broken = root / "gguf-broken"
    shutil.copytree(gguf, broken)
    corrupt_gguf_tensor(broken, CORRUPT)
    cfg = bench_cfg(ref)
    runs = [bench(cfg, [f"int4={q4}", f"q4_0={gguf}"], root / f"run{i}") for i in range(2)]
    baseline = write_baseline(runs[0], root / "baseline.json", spread_runs=[runs[1]])
    bad = bench(cfg, [f"int4={q4}", f"q4_0={broken}"], root / "run-bad")
    return baseline, runs, bad


def test_baseline_tolerances_come_from_its_spread(gate):
    data = json.loads(gate[0].read_text())
    assert data["version"] == 2 and data["spread_runs"] == 2
    row = next(r for r in data["rows"] if r["label"] == "q4_0")
    assert row["spread"]["perplexity"] == 0.0  # deterministic: the floor, a tight tolerance
    assert row["tolerance"]["perplexity"] == pytest.approx(1e-3)
    n = MC_LIMIT
    p = row["mc_mean"]
    assert row["tolerance"]["mc_mean"] >= 2 * (max(p * (1 - p), 0.25 / n) / n) ** 0.5 - 1e-12


def test_gate_passes_identical_run(gate, run_cli):
    rc, out, err = run_cli("check", gate[1][1], "--baseline", gate[0])
    assert rc == 0 and "PASSED" in out and "diagnosis" not in out


def test_gate_fails_corrupted_export_and_names_the_layer(gate, run_cli):
    rc, out, err = run_cli("check", gate[2], "--baseline", gate[0])
    assert rc == 1 and "REGRESSED" in out
    diag = out.split("diagnosis:", 1)[1]
    assert "q4_0 (llama.cpp): the export" in diag
    assert "model.layers.0.self_attn.v_proj" in diag and CORRUPT in diag


def test_tolerance_override_wins_over_the_rows_own(gate):
    from compress.harness import CheckConfig, check

    loose = CheckConfig(ppl=100.0, kl=100.0, top1=1.0, mc=1.0)
    assert not check(gate[2], gate[0], loose).passed  # the rows' own tolerances still apply
    assert check(gate[2], gate[0], loose, frozenset({"ppl", "kl", "top1", "mc"})).passed
