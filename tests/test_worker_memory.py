"""The bench worker's memory figures are the runtime's own: a known allocation shows up, bookkeeping does not.

Each case runs the worker's ``measure`` in a fresh interpreter (a pytest process's high-water mark would
hide a 100 MB allocation), with a stand-in runtime whose ``generate`` touches a known buffer and a
``bytes_per_token`` that allocates far more, as parsing an ONNX file used to.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from compress.memory import memory_status, peak_rss_mb

_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from compress.harness import worker, roofline

    GEN_MB, BOOK_MB = {gen_mb}, {book_mb}

    class Gen:
        time_to_first_token_s = 0.01; prefill_tokens_per_s = 100.0; decode_tokens_per_s = 50.0
        new_ids = [1, 2]; total_s = 0.1

    class FakeRuntime:
        name = "fake"
        kept = None
        def version(self): return "0"
        def generate(self, prompt, new):
            if self.kept is None:  # the runtime's own working memory: touched, kept
                self.kept = np.ones(GEN_MB << 18, dtype=np.float32)
            return Gen()

    def bookkeeping(rt, pos):  # what parsing a model file costs, after the measurement
        junk = np.ones(BOOK_MB << 18, dtype=np.float32)
        return {{"weights": float(junk.sum()), "kv": 0.0, "total": float(junk.sum())}}

    worker.preimport = lambda name: None
    worker.load_runtime = lambda *a, **k: FakeRuntime()
    roofline.bytes_per_token = bookkeeping
    spec = {{"runtime": "fake", "path": "x", "profile": {{"name": "t", "threads": 1}}, "prompt_ids": [1, 2, 3],
            "new_tokens": 2, "warmup": 0, "repetitions": 1}}
    print(json.dumps(worker.measure(spec)))
""")


def _measure(gen_mb: int, book_mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(gen_mb=gen_mb, book_mb=book_mb)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_worker_reports_a_known_allocation_and_not_its_bookkeeping():
    res = _measure(gen_mb=200, book_mb=600)
    grew = res["peak_rss_mb"] - res["rss_loaded_mb"]
    assert 190 <= grew <= 260, grew  # the 200 MB the runtime touched, not the 600 MB of bookkeeping
    gen = res["memory"]["generated"]
    assert gen["anon"] - res["memory"]["loaded"]["anon"] >= 190  # heap memory is anonymous, not file-backed
    assert gen["peak"] == res["peak_rss_mb"]


def test_memory_status_splits_anonymous_and_file_backed(tmp_path):
    before = memory_status()
    assert {"peak", "rss", "anon", "file"} <= set(before)
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\x01" * (64 << 20))
    m = np.memmap(f, dtype=np.uint8, mode="r")
    touched = int(m[:: 4096].sum())  # fault every page of the mapping in
    after = memory_status()
    assert touched == (64 << 20) // 4096
    assert after["file"] - before["file"] >= 60  # a mapped file is file-backed resident memory
    assert peak_rss_mb() >= after["rss"]
    del m


def _fake_worker(decode_tok_s: float):
    def run(spec, **kw):
        run = {"ttft_s": 0.01, "prefill_tok_s": 100.0, "decode_tok_s": decode_tok_s, "new_tokens": 4, "total_s": 0.1}
        return {"runtime_version": "0", "load_s": 0.1, "runs": [run], "peak_rss_mb": 300.0, "rss_start_mb": 50.0,
                "rss_loaded_mb": 200.0, "bytes_per_token": {"weights": 1e8, "kv": 0.0, "total": 1e8},
                "memory": {"loaded": {"anon": 120.0, "file": 80.0}, "generated": {"anon": 150.0, "file": 90.0}},
                "enforcement": {"mechanism": "none", "limit_mb": None, "cores": [0]}}
    return run


def test_roofline_fraction_above_one_is_refused_as_measurement_error(monkeypatch):
    from compress.harness import runner
    from compress.harness.config import BenchConfig
    from compress.harness.targets import Target

    t = Target("x", "x", "export-gguf", "id", 1, {"llama.cpp": "x.gguf"}, None)
    from runtimes.base import DeviceProfile

    profile = DeviceProfile(threads=1)
    # bound = 10 GB/s / 100 MB = 100 tok/s
    monkeypatch.setattr(runner, "run_worker", _fake_worker(80.0))
    ok = runner._latency(BenchConfig(), t, "llama.cpp", profile, [1, 2], 10.0)
    assert ok["roofline_fraction"] == 0.8 and "roofline_refused" not in ok
    assert (ok["rss_anon_generated_mb"], ok["rss_file_generated_mb"]) == (150.0, 90.0)
    monkeypatch.setattr(runner, "run_worker", _fake_worker(150.0))
    bad = runner._latency(BenchConfig(), t, "llama.cpp", profile, [1, 2], 10.0)
    assert bad["roofline_fraction"] is None and bad["roofline_refused"].startswith("1.50")


def test_a_worker_killed_by_the_budget_is_a_measured_verdict_not_an_error(monkeypatch):
    from compress.harness import runner
    from compress.harness.config import BenchConfig
    from compress.harness.tables import budget_table
    from compress.harness.targets import Target
    from runtimes.base import DeviceProfile

    why = "over profile 'phone-lowend''s memory budget: killed under cgroup-v1 memory.limit_in_bytes = 1536 MB"
    monkeypatch.setattr(runner, "run_worker", lambda spec, **kw: {"over_budget": why, "enforcement": {
        "mechanism": "cgroup-v1 memory.limit_in_bytes", "limit_mb": 1536, "cores": [0, 1]}})
    t = Target("big", "big", "export-onnx", "id", 1, {"onnxruntime": "model.onnx"}, None)
    profile = DeviceProfile(name="phone-lowend", threads=2, memory_budget_mb=1536)
    row = runner._latency(BenchConfig(), t, "onnxruntime", profile, [1, 2], None)
    assert row["fits_memory_enforced"] is False and row["memory_verdict"] == why and "decode_tok_s" not in row
    row.update(label="big", runtime="onnxruntime", file_mb=900.0, fits_memory=False, fits_storage=False)
    cols, body = budget_table([row], {"memory_budget_mb": 1536, "storage_budget_mb": 300})
    assert "TOO BIG: over profile 'phone-lowend'" in body[0][-1]


def test_a_depth_prompt_is_the_context_before_the_same_prompt_length():
    from compress.harness.config import BenchConfig
    from compress.harness.runner import _prompt_ids
    from compress.tiny import build_tokenizer

    tok = build_tokenizer(add_bos=False)
    cfg = BenchConfig(prompt_tokens=16)
    base, deep = _prompt_ids(tok, cfg), _prompt_ids(tok, cfg, depth=64)
    assert len(base) == 16 and len(deep) == 80 and deep[:16] == base
