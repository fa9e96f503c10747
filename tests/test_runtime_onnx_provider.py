"""The onnxruntime runtime runs on XNNPACK where the build has it (else the CPU provider) and bench rows
record the provider the session actually got."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import onnxruntime
import pytest

from runtimes import DeviceProfile, get_runtime
from runtimes.onnx_runtime import CPU, XNNPACK, execution_providers, make_session

SHAPE = {"num_attention_heads": 6, "num_key_value_heads": 2}  # GroupQueryAttention: head_dim 16
_REAL = onnxruntime.get_available_providers()


@functools.lru_cache(maxsize=None)
def _export() -> Path:
    from export.onnx import OnnxConfig, export_onnx
    from compress.tiny import save_tiny

    work = Path(tempfile.mkdtemp(prefix="onnx-provider-"))
    src = save_tiny(work / "src", "llama", seed=0, **SHAPE)
    return export_onnx(str(src), OnnxConfig(precision="fp32", max_length=64), work / "onnx").parent


class _XnnpackBuild(onnxruntime.InferenceSession):
    """This machine's CPU-only onnxruntime dressed as a build with XNNPACK: it records the providers asked
    for, runs on the CPU, and reports XNNPACK first when it was asked for (as a real build would)."""

    asked: list = []

    def __init__(self, path, so=None, providers=None, **kw):
        type(self).asked.append((providers, so.get_session_config_entry("session.intra_op.allow_spinning")))
        self._xnnpack = any((p[0] if isinstance(p, tuple) else p) == XNNPACK for p in providers or [])
        super().__init__(path, so, providers=[CPU], **kw)

    def get_providers(self):
        return ([XNNPACK] if self._xnnpack else []) + super().get_providers()


@pytest.fixture
def xnnpack_build(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [XNNPACK, *_REAL])
    monkeypatch.setattr(onnxruntime, "InferenceSession", _XnnpackBuild)
    _XnnpackBuild.asked = []
    return _XnnpackBuild


def test_xnnpack_comes_first_with_the_profile_threads_when_the_build_has_it(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", XNNPACK, CPU])
    assert execution_providers(3) == [(XNNPACK, {"intra_op_num_threads": "3"}), CPU]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    assert execution_providers(3) == [CPU]


def test_session_asks_for_xnnpack_without_spinning_and_the_runtime_reports_it(xnnpack_build):
    rt = get_runtime("onnxruntime")
    rt.load(_export(), DeviceProfile(threads=2))
    providers, spinning = xnnpack_build.asked[-1]
    assert providers == [(XNNPACK, {"intra_op_num_threads": "2"}), CPU] and spinning == "0"
    assert rt.provider == XNNPACK
    assert rt.generate([5, 6, 7], 3).new_ids  # it still runs


def test_without_xnnpack_the_session_is_cpu_only(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    rt = get_runtime("onnxruntime")
    rt.load(_export(), DeviceProfile(threads=1))
    assert rt.provider == CPU and rt.decoder.session.get_providers() == [CPU]


def test_a_failing_xnnpack_session_falls_back_to_the_cpu_provider(monkeypatch):
    real = onnxruntime.InferenceSession

    def picky(path, so=None, providers=None, **kw):
        if any(isinstance(p, tuple) and p[0] == XNNPACK for p in providers):
            raise RuntimeError("XNNPACK: unsupported")
        return real(path, so, providers=providers, **kw)

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [XNNPACK, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", picky)
    assert make_session(_export() / "model.onnx", 1).get_providers() == [CPU]


def test_bench_rows_record_the_provider_the_session_got(xnnpack_build, monkeypatch):
    from compress.harness import runner
    from compress.harness.config import BenchConfig
    from compress.harness.targets import resolve_target
    from compress.harness.worker import measure

    target = resolve_target(f"onnx={_export()}")
    profile = DeviceProfile(threads=1)
    row = runner._base_row(target, "onnxruntime", profile, profile, "")
    assert row["execution_provider"] == XNNPACK and row["xnnpack_available"] is True
    # in this process, so the XNNPACK build is seen
    monkeypatch.setattr(runner, "run_worker", lambda spec, **kw: {**measure(spec), "enforcement": {
        "mechanism": "none", "limit_mb": None, "cores": []}})
    cfg = BenchConfig(prompt_tokens=4, new_tokens=3, warmup=0, repetitions=1)
    out = runner._latency(cfg, target, "onnxruntime", profile, [5, 6, 7, 8], None)
    assert out["execution_provider"] == XNNPACK
