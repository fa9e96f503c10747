"""The ONNX path keeps one fixed-size KV buffer per generation (issue #14, point 3): GroupQueryAttention's past and
present bound to the same memory, written in place, equal to PyTorch past the prompt; the buffer is allocated once;
an export without the declaration runs the growing path; ``kv_dtype`` float16 halves the cache and stays within
float16 rounding; onnxruntime-genai drives the same folder with ``past_present_share_buffer`` on."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from artifact_fixtures import torch_greedy, without_kv_declaration
from compress.errors import ConfigError
from compress.manifest import read_manifest
from compress.tiny import save_tiny
from export.onnx import OnnxConfig, export_onnx
from export.onnx.kv import shares_buffer
from runtimes import DeviceProfile, get_runtime
from runtimes.onnx_kv import KV_META
from runtimes.onnx_runtime import OnnxDecoder, make_session

_WORK = Path(tempfile.mkdtemp(prefix="kv-buffer-tests-"))
atexit.register(shutil.rmtree, _WORK, True)
SHAPES = {"llama": {"num_attention_heads": 6, "num_key_value_heads": 2},  # head_dim 16: GroupQueryAttention's x16
          "gemma3": {"head_dim": 32}}  # a 32-token sliding window: prompt + 40 new tokens run past it
PROMPT = [5, 17, 42, 99, 7, 123, 64, 11]  # 8 tokens
NEW = 40
BUFFER = 64  # longer than prompt + new tokens, shorter than the export's rotary tables (96)


@functools.lru_cache(maxsize=None)
def _src(arch: str) -> Path:
    return save_tiny(_WORK / f"src-{arch}", arch, seed=0, **SHAPES[arch])


@functools.lru_cache(maxsize=None)
def _export(arch: str, kv_dtype: str = "float32") -> Path:
    cfg = OnnxConfig(precision="fp32", max_length=96, kv_dtype=kv_dtype)
    return export_onnx(str(_src(arch)), cfg, _WORK / f"onnx-{arch}-{kv_dtype}").parent


@functools.lru_cache(maxsize=None)
def _torch(arch: str):
    return torch_greedy(_src(arch), PROMPT, NEW)


def _decoder(folder: Path, name: str = "model.onnx", **kw) -> OnnxDecoder:
    return OnnxDecoder(make_session(folder / name, threads=1), read_manifest(folder).report["max_length"], **kw)


def _greedy_through(cache, n: int) -> tuple[list[int], np.ndarray]:
    rows = [cache.feed(PROMPT)]
    new = [int(rows[-1].argmax())]
    while len(new) < n:
        rows.append(cache.feed([new[-1]]))
        new.append(int(rows[-1].argmax()))
    return new, np.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_64_position_buffer_gives_pytorchs_greedy_tokens_and_logits_past_the_prompt(arch):
    folder = _export(arch)
    assert read_manifest(folder).report["kv_cache"] == {"dtype": "float32", "share_buffer": True}
    decoder = _decoder(folder)
    assert decoder.shares_buffer
    cache = decoder.new_cache(BUFFER)
    assert cache.capacity == BUFFER and {b.shape()[2] for b in cache.buffers} == {BUFFER}
    got, rows = _greedy_through(cache, NEW)
    want, ref = _torch(arch)
    assert got == want and cache.length == len(PROMPT) + NEW - 1
    # positions 7 .. 46: the prompt's last and every fed token, through the buffer; float32 end to end
    np.testing.assert_allclose(rows, ref[len(PROMPT) - 1:-1], atol=1e-5, rtol=0)
    assert decoder.generate(PROMPT, NEW).new_ids == want  # the runtime's own loop, sized to the request


def test_generation_allocates_the_buffer_once_and_every_step_writes_into_it(monkeypatch):
    decoder = _decoder(_export("llama"))
    made, steps = [], []
    allocate = onnxruntime.OrtValue.ortvalue_from_shape_and_type

    def counting(*a, **kw):
        made.append(allocate(*a, **kw))
        return made[-1]

    def run_with_iobinding(binding, *a):
        onnxruntime.InferenceSession.run_with_iobinding(decoder.session, binding, *a)
        # outputs in the order they were bound: every present first, then logits
        steps.append(tuple(v.data_ptr() for v in binding.get_outputs()[:-1]))

    def growing(*a, **kw):
        raise AssertionError("the growing path ran")

    monkeypatch.setattr(onnxruntime.OrtValue, "ortvalue_from_shape_and_type", staticmethod(counting))
    monkeypatch.setattr(decoder.session, "run_with_iobinding", run_with_iobinding)
    monkeypatch.setattr(decoder.session, "run_with_ort_values", growing)
    gen = decoder.generate(PROMPT, NEW)
    assert len(gen.new_ids) == NEW and decoder.kv_allocations == 1
    assert len(made) == len(decoder.past_names) == 4  # one buffer per past input (2 layers x key, value), once
    assert len(steps) == NEW  # the prefill and 39 decode steps
    assert set(steps) == {tuple(b.data_ptr() for b in made)}  # present is the buffer at every step


def test_runtime_load_sizes_the_buffer_to_n_ctx_like_llama_cpps_context():
    rt = get_runtime("onnxruntime")
    rt.load(_export("llama"), DeviceProfile(threads=1), n_ctx=80)
    assert rt.decoder.new_cache(10).capacity == 80  # at least n_ctx ...
    assert rt.decoder.new_cache(90).capacity == 90  # ... and what a generation needs
    assert rt.decoder.new_cache(500).capacity == 96  # never past the rotary tables
    assert rt.kv_bytes_per_position() == 2 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head_dim x float32


def test_a_cache_refuses_to_overflow_and_truncates_to_a_common_prefix():
    decoder = _decoder(_export("llama"))
    cache = decoder.new_cache(len(PROMPT) + 2)
    whole = decoder.logits(PROMPT + [3, 4])
    cache.feed(PROMPT)
    np.testing.assert_allclose(cache.feed([3, 4]), whole[-1], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="does not fit the KV buffer of 10 positions"):
        cache.feed([5])
    cache.truncate(4)  # keep the first 4 positions; the rest is written over
    np.testing.assert_allclose(cache.feed(PROMPT[4:] + [3, 4]), whole[-1], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="--max-length"):
        decoder.generate(PROMPT, 96)  # 8 + 95 positions: longer than the export's 96


def test_a_graph_without_the_declaration_runs_the_growing_path_with_the_same_tokens(tmp_path):
    folder = _export("llama")
    model = without_kv_declaration(folder, tmp_path, KV_META)  # as exported before the buffer was shared
    decoder = OnnxDecoder(make_session(model, threads=1), 96)
    assert not decoder.shares_buffer
    got = decoder.generate(PROMPT, NEW)
    assert got.new_ids == _torch("llama")[0] and decoder.kv_allocations == 0
    with pytest.raises(ConfigError, match="does not declare a shared past/present KV buffer"):
        decoder.new_cache(16)


def test_a_prefill_of_our_export_computes_the_last_positions_logits_only():
    """logits_to_keep is an input with a default (an overridable initializer to onnxruntime, not in get_inputs):
    missing it made every prefill compute all positions' logits, 2 GiB for Gemma3 at 2,048 tokens (issue #14)."""
    decoder = _decoder(_export("llama"))
    assert decoder.layout.keeps_last
    cache = decoder.new_cache(BUFFER)
    cache.feed(PROMPT)
    assert cache.binding.get_outputs()[-1].shape() == [1, 1, decoder.layout.vocab]  # logits, bound last


def test_sharing_is_declared_only_where_gqa_writes_present_from_past_itself():
    m = onnx.load(str(_export("llama") / "model.onnx"), load_external_data=False)
    assert shares_buffer(m.graph)
    node = next(n for n in m.graph.node if "present.0.key" in n.output)
    node.output[list(node.output).index("present.0.key")] = "copied"
    m.graph.node.append(onnx.helper.make_node("Identity", ["copied"], ["present.0.key"]))  # a copy between
    assert not shares_buffer(m.graph)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_float16_kv_cache_halves_the_buffer_and_stays_within_float16_rounding_of_pytorch(arch):
    folder = _export(arch, "float16")
    r = read_manifest(folder).report
    assert r["kv_cache"] == {"dtype": "float16", "share_buffer": True}
    assert r["validation"]["tolerance"]["max_abs"] == 0.05  # held to fp32's tolerance all the same
    decoder = _decoder(folder)
    ins = {i.name: i.type for i in decoder.session.get_inputs()}
    outs = {o.name: o.type for o in decoder.session.get_outputs()}
    assert ins["past_key_values.0.key"] == outs["present.1.value"] == "tensor(float16)"
    assert ins["input_ids"] == "tensor(int64)" and outs["logits"] == "tensor(float)"
    assert decoder.layout.bytes_per_position * 2 == _decoder(_export(arch)).layout.bytes_per_position
    cache = decoder.new_cache(BUFFER)
    assert {b.data_type() for b in cache.buffers} == {"tensor(float16)"}
    got, rows = _greedy_through(cache, NEW)
    want, ref = _torch(arch)
    assert got == want
    # keys and values stored with float16's 11-bit significand: ~1e-4 here, float32 gives ~1e-7
    np.testing.assert_allclose(rows, ref[len(PROMPT) - 1:-1], atol=1e-3, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_genai_runs_the_shared_buffer_and_a_float16_cache_like_our_loop(arch):
    import onnxruntime_genai  # noqa: F401  (installed with the project's venv; the runtime names its install)

    for kv in ("float32", "float16"):
        folder = _export(arch, kv)
        genai = json.loads((folder / "genai_config.json").read_text())
        assert genai["search"]["past_present_share_buffer"] is True
        eos = genai["model"]["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]
        ours, theirs = get_runtime("onnxruntime"), get_runtime("onnxruntime-genai")
        ours.load(folder, DeviceProfile(threads=1))
        theirs.load(folder, DeviceProfile(threads=1))
        got = theirs.generate(PROMPT, NEW).new_ids
        want = ours.generate(PROMPT, NEW).new_ids
        assert got == want[:len(got)] and (len(got) == NEW or got[-1] in eos)  # it stops at an end token


def test_kv_dtype_is_validated_and_names_what_onnxruntimes_cpu_kernel_lacks():
    assert OnnxConfig().kv_dtype == "float32" and OnnxConfig.VERSION >= 3
    for bad, why in (("int8", "only with static k_scale/v_scale"), ("bfloat16", "no bfloat16 cache with the float32")):
        with pytest.raises(ConfigError, match=f"export-onnx.kv_dtype: '{bad}': onnxruntime's CPU "
                                              f"GroupQueryAttention .*{why}"):
            OnnxConfig(kv_dtype=bad)
    with pytest.raises(ConfigError, match="did you mean 'float16'"):
        OnnxConfig(kv_dtype="fp16")
    old = OnnxConfig.from_dict({"type": "export-onnx", "version": 2, "precision": "int4"})
    assert old.version == OnnxConfig.VERSION and old.kv_dtype == "float32"
    cfg = OnnxConfig(kv_dtype="float16")
    assert OnnxConfig.from_dict(cfg.to_dict()) == cfg and cfg != OnnxConfig()
