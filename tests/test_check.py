"""compress check: the CI gate passes an identical run, fails a degraded one, refuses bad baselines."""

from __future__ import annotations

import json

import pytest

from compress.errors import ConfigError
from compress.harness import CheckConfig, check, write_baseline
from compress.harness.gate import parse_tolerances
from test_bench import accuracy_run


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "baseline.json"
    write_baseline(accuracy_run("base"), path)
    return path


def test_identical_run_passes(baseline, run_cli):
    again = accuracy_run("again")
    result = check(again, baseline)
    assert result.passed and result.failures() == [] and "PASSED" in result.table()
    rc, out, err = run_cli("check", again, "--baseline", baseline)
    assert rc == 0 and "PASSED" in out


def test_degraded_artifacts_fail_with_a_readable_diff(baseline, run_cli):
    bad = accuracy_run("perturbed", perturb=0.2)
    result = check(bad, baseline)
    assert not result.passed
    failed = {(f["label"], f["metric"]) for f in result.failures()}
    assert ("q8_0", "perplexity") in failed or ("q8_0", "top1") in failed
    assert all(label != "reference" for label, _ in failed)  # the reference itself did not change
    rc, out, err = run_cli("check", bad, "--baseline", baseline)
    assert rc == 1 and "REGRESSED" in out and "FAILED" in out and "q8_0" in out
    # generous enough tolerances let the same run through
    loose = CheckConfig(ppl=10.0, kl=10.0, top1=1.0, mc=1.0)
    assert check(bad, baseline, loose).passed


def test_size_growth_and_missing_rows_fail(baseline, tmp_path):
    data = json.loads(baseline.read_text())
    for row in data["rows"]:
        row["file_bytes"] = int(row["file_bytes"] * 0.9)  # the run's files are now 11% larger
    data["rows"].append({**data["rows"][0], "label": "gone"})
    edited = tmp_path / "b.json"
    edited.write_text(json.dumps(data))
    result = check(accuracy_run("again"), edited)
    metrics = {(f["label"], f["metric"], f["status"]) for f in result.failures()}
    assert ("int8", "file_bytes", "REGRESSED") in metrics and ("gone", "-", "MISSING from this run") in metrics


def test_latency_is_gated_only_when_asked(baseline, tmp_path):
    data = json.loads(baseline.read_text())
    for row in data["rows"]:
        row["decode_tok_s"] = 1e9  # a baseline no machine can match
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(data))
    run = accuracy_run("again")
    assert check(run, fast).passed
    # the run has no latency phase: with --latency a missing decode figure is a regression, not a pass
    assert not check(run, fast, CheckConfig(latency=True)).passed


def test_baseline_from_another_model_is_refused(baseline, tmp_path, run_cli):
    data = json.loads(baseline.read_text())
    data["reference_id"], data["reference"] = "dir:0000", "other-model"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="another reference model.*dir:0000.*other-model.*refusing"):
        check(accuracy_run("again"), other)
    rc, out, err = run_cli("check", accuracy_run("again"), "--baseline", other)
    assert rc == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, match", [("{not json", "malformed baseline, not JSON"),
                                         ('{"rows": []}', "not a compress-bench-baseline file"),
                                         ('{"format": "compress-bench-baseline", "rows": [1]}', "'rows' must be")])
def test_malformed_baseline_is_one_line_naming_the_file(tmp_path, run_cli, text, match):
    f = tmp_path / "bad.json"
    f.write_text(text)
    rc, out, err = run_cli("check", accuracy_run("again"), "--baseline", f)
    assert rc == 2 and str(f) in err.replace("\n", "") and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match=match):
        check(accuracy_run("again"), f)


def test_update_baseline_writes_one_that_the_same_run_passes(tmp_path, run_cli):
    run = accuracy_run("again")
    target = tmp_path / "new" / "baseline.json"
    rc, out, err = run_cli("check", run, "--baseline", target, "--update-baseline")
    assert rc == 0 and target.is_file()
    assert json.loads(target.read_text())["format"] == "compress-bench-baseline"
    assert check(run, target).passed


def test_tolerance_option_parsing():
    cfg = parse_tolerances("ppl=0.02, kl=0.005", latency=True)
    assert (cfg.ppl, cfg.kl, cfg.top1, cfg.latency) == (0.02, 0.005, 0.02, True)
    with pytest.raises(ConfigError, match="unknown key 'pp'"):
        parse_tolerances("pp=0.1", latency=False)
    with pytest.raises(ConfigError, match="not a number"):
        parse_tolerances("kl=abc", latency=False)
    with pytest.raises(ConfigError, match="must be >= 0"):
        parse_tolerances("kl=-1", latency=False)
