"""compress bench on tiny artifacts: one row per artifact × runtime, parity with PyTorch, RSS per process,
roofline figures, and bad input. The run built here is shared with test_report.py / test_check.py."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from compress.errors import ArtifactError, ConfigError, MissingBackendError
from compress.harness import BenchConfig, bench, read_rows
from compress.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent
_WORK = Path(tempfile.mkdtemp(prefix="bench-tests-"))
atexit.register(shutil.rmtree, _WORK, True)
# onnxruntime's GroupQueryAttention needs head_dim % 16 == 0: 6 heads of 16
SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}


def small_config(reference: Path, **kw) -> BenchConfig:
    base = dict(reference=str(reference), max_tokens=384, window=128, tasks=("sports_understanding",), mc_limit=6,
                prompt_tokens=16, new_tokens=8, warmup=0, repetitions=2)
    return BenchConfig(**{**base, **kw})


@functools.lru_cache(maxsize=None)
def tiny_pipeline(perturb: float = 0.0) -> dict[str, Path]:
    """The reference and three artifacts, one per runtime (built once per test process)."""
    import torch

    from compress.quantize import QuantConfig, run_quantize
    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx
    from compress.tiny import save_perturbed, save_tiny

    torch.set_num_threads(1)
    work = _WORK / f"pipeline-{perturb}"
    ref = save_tiny(work / "reference", "llama", seed=0, **SHAPE)
    src = ref
    if perturb:  # a tests-only degraded model: Gaussian noise on every matrix, then the same pipeline
        src = save_perturbed(work / "perturbed", perturb, "llama", seed=0, **SHAPE)
    return {"reference": ref,
            "int8": run_quantize(str(src), QuantConfig(scheme="int8", eval_tokens=0), work / "int8"),
            "q8_0": export_gguf(str(src), GGUFConfig(qtype="Q8_0"), work / "q8_0").parent,
            "onnx": export_onnx(str(src), OnnxConfig(precision="fp32", max_length=256), work / "onnx").parent}


@functools.lru_cache(maxsize=None)
def latency_run() -> Path:
    """A full bench (accuracy + latency subprocesses + roofline) of the tiny pipeline."""
    p = tiny_pipeline()
    arts = [f"{k}={v}" for k, v in p.items() if k != "reference"]
    return bench(small_config(p["reference"], depths=(0, 64)), arts, _WORK / "run-latency")


@functools.lru_cache(maxsize=None)
def accuracy_run(name: str, perturb: float = 0.0) -> Path:
    """An accuracy-only bench of the (perhaps perturbed) pipeline against the unperturbed reference."""
    p = tiny_pipeline(perturb)
    arts = [f"{k}={v}" for k, v in p.items() if k != "reference"]
    ref = tiny_pipeline()["reference"]
    return bench(small_config(ref, latency=False), arts, _WORK / name, force=True)


@pytest.fixture(scope="module")
def rows():
    return {(r["label"], r["runtime"]): r for r in read_rows(latency_run())}


def test_one_row_per_artifact_and_runtime_with_ids_from_manifests(rows):
    p = tiny_pipeline()
    assert set(rows) == {("reference", "pytorch"), ("int8", "pytorch"), ("q8_0", "llama.cpp"), ("onnx", "onnxruntime")}
    for (label, runtime), r in rows.items():
        assert r["runtime_version"] and r["threads"] >= 1 and r["profile"] == "laptop"
        if label != "reference":
            assert r["artifact_id"] == read_manifest(p[label]).content_id
            assert r["stage"] == read_manifest(p[label]).stage
    assert rows[("q8_0", "llama.cpp")]["file_bytes"] == (p["q8_0"] / "model.Q8_0.gguf").stat().st_size
    assert rows[("onnx", "onnxruntime")]["execution_provider"] == "CPUExecutionProvider"


def test_every_runtime_matches_the_reference_within_its_tolerance(rows):
    ref = rows[("reference", "pytorch")]
    assert ref["kl"] == 0 and ref["top1"] == 1 and ref["perplexity_ratio"] == 1
    assert rows[("onnx", "onnxruntime")]["kl"] < 1e-6 and rows[("onnx", "onnxruntime")]["top1"] > 0.99  # fp32
    for key in (("q8_0", "llama.cpp"), ("int8", "pytorch")):  # 8-bit weights
        assert rows[key]["kl"] < 1e-3 and abs(rows[key]["perplexity_ratio"] - 1) < 0.01
    assert all(0 <= r["mc"]["sports_understanding"] <= 1 for r in rows.values())


def test_latency_and_rss_are_measured_per_process(rows):
    from compress.harness.worker import peak_rss_mb

    for r in rows.values():
        assert r["reps"] == 2 and r["new_tokens"] == 8 and r["prompt_tokens"] == 16
        assert r["decode_tok_s_min"] <= r["decode_tok_s"] <= r["decode_tok_s_max"]
        assert r["ttft_s"] > 0 and r["load_s"] > 0 and r["peak_rss_mb"] >= r["rss_start_mb"] > 0
    # a llama.cpp worker never imports torch: far below a PyTorch worker, and below this test
    # process (a figure inherited from the parent would be at least the parent's)
    llama, torch_row = rows[("q8_0", "llama.cpp")]["peak_rss_mb"], rows[("int8", "pytorch")]["peak_rss_mb"]
    assert llama < torch_row / 2 and llama < peak_rss_mb()


def test_speed_is_measured_again_at_each_context_depth(rows):
    from compress.harness.tables import latency_table

    for r in rows.values():
        for k in ("decode_tok_s@64", "prefill_tok_s@64", "ttft_s@64"):
            assert r[k + "_min"] <= r[k] <= r[k + "_max"] and r[k] > 0
    cols, body = latency_table(list(rows.values()))
    assert "decode tok/s at 64 context" in cols and all(line[cols.index("decode tok/s at 64 context")] != "-"
                                                        for line in body)


def test_roofline_fraction_is_decode_speed_over_bandwidth_bound(rows):
    for r in rows.values():
        assert r["bandwidth_gb_s"] > 0 and r["bytes_per_token"] > r["kv_bytes_per_token"] > 0
        fraction = r["decode_tok_s"] * r["bytes_per_token"] / (r["bandwidth_gb_s"] * 1e9)
        if fraction > 1:  # faster than the read kernel: refused as a measurement error, never shown
            assert r["roofline_fraction"] is None and "measurement error" in r["roofline_refused"]
        else:
            assert r["roofline_fraction"] == pytest.approx(fraction)
    # Q8_0 weights (8.5 bits) are read instead of fp32: about a quarter of the bytes per token
    ratio = rows[("q8_0", "llama.cpp")]["weight_bytes_per_token"] / rows[("reference", "pytorch")]["weight_bytes_per_token"]
    assert 0.2 < ratio < 0.35


def test_run_dir_is_an_artifact_with_rows(rows):
    m = read_manifest(latency_run())
    assert m.stage == "bench" and m.config["type"] == "bench" and "rows.jsonl" in m.files
    assert m.report["reference_id"].startswith("dir:") and m.report["tokens"] > 300


def test_runtimes_option_restricts_and_adds(tmp_path):
    p = tiny_pipeline()
    # PyTorch can also run the GGUF (dequantized): the same file, two runtimes
    run = bench(small_config(p["reference"], latency=False, runtimes=("pytorch", "llama.cpp"), include_reference=False,
                             mc_limit=2), [f"q8_0={p['q8_0']}"], tmp_path / "r")
    got = {r["runtime"]: r for r in read_rows(run)}
    assert set(got) == {"pytorch", "llama.cpp"}
    assert abs(got["pytorch"]["perplexity"] / got["llama.cpp"]["perplexity"] - 1) < 0.01


def test_artifact_without_manifest_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        bench(small_config(tiny_llama_dir), [str(tiny_llama_dir)], tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_reference_that_manifests_cannot_tell_must_be_given(tmp_path):
    with pytest.raises(ConfigError, match="pass --reference"):
        bench(BenchConfig(latency=False), [str(tiny_pipeline()["int8"])], tmp_path / "r")


def test_runtime_that_is_not_installed_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    p = tiny_pipeline()
    with pytest.raises(MissingBackendError, match="pip install llama-cpp-python"):
        bench(small_config(p["reference"], latency=False), [str(p["q8_0"])], tmp_path / "r")


def test_bench_cli_prints_the_tables_and_bad_runtime_is_exit_2(run_cli, tmp_path):
    p = tiny_pipeline()
    rc, out, err = run_cli("bench", f"q8_0={p['q8_0']}", "--reference", p["reference"], "--no-latency",
                           "--max-tokens", "256", "--window", "128", "--tasks", "", "--out", tmp_path / "r")
    assert rc == 0, err
    assert "q8_0" in out and "llama.cpp" in out and json.loads((tmp_path / "r" / "rows.jsonl").read_text().splitlines()[0])
    rc, out, err = run_cli("bench", str(p["q8_0"]), "--runtimes", "llamacpp", "--out", tmp_path / "r2")
    assert rc == 2 and "unknown runtime 'llamacpp'" in err and "did you mean 'llama.cpp'" in err
