"""Our ONNX export runs in onnxruntime-genai's generator (issue #14, point 4): the folder carries
``genai_config.json``, ``logits_to_keep`` is optional, and the generator's greedy tokens and logits
equal our own loop's (runtimes/onnx_runtime.py) on the same file, fp32 and int4, for every family."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from artifact_fixtures import rtn_artifact
from compress.tiny import FAMILY_CONFIGS, save_family, save_tiny

from compress.errors import ArtifactError, MissingBackendError
from compress.manifest import read_manifest
from export.onnx import OnnxConfig, export_onnx
from runtimes import DeviceProfile, get_runtime, known_runtimes

og = pytest.importorskip("onnxruntime_genai", reason="pip install onnxruntime-genai")

_WORK = Path(tempfile.mkdtemp(prefix="genai-tests-"))
atexit.register(shutil.rmtree, _WORK, True)
PROMPT = [5, 17, 42, 99, 7, 123, 64]
LLAMA = {"num_attention_heads": 6, "num_key_value_heads": 2}  # head_dim 16: GroupQueryAttention needs x16


@functools.lru_cache(maxsize=None)
def _export(kind: str, precision: str) -> Path:
    """A tiny export, once per process: "llama" and "gemma3" from compress/tiny.py (Gemma3 with a 32-token
    sliding window), "llama-q4" from an RTN quantize artifact whose integers the export carries, or a
    family row of compress.families."""
    work = _WORK / f"{kind}-{precision}"
    if kind == "llama":
        src = save_tiny(work / "src", "llama", seed=0, **LLAMA)
    elif kind == "gemma3":
        src = save_tiny(work / "src", "gemma3", seed=0, head_dim=32)
    elif kind == "llama-q4":
        src = rtn_artifact(save_tiny(work / "src", "llama", seed=0, **LLAMA), work / "q4", bits=4, group=32)
    else:
        src = save_family(work / "src", kind, seed=0)
    return export_onnx(str(src), OnnxConfig(precision=precision, max_length=96), work / "onnx").parent


def _both(folder: Path):
    ours, theirs = get_runtime("onnxruntime"), get_runtime("onnxruntime-genai")
    ours.load(folder, DeviceProfile(threads=1))
    theirs.load(folder, DeviceProfile(threads=1))
    return ours, theirs


def _same_greedy(folder: Path, new: int) -> list[int]:
    ours, theirs = _both(folder)
    got = theirs.generate(PROMPT, new).new_ids
    eos = json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    # the generator stops at an end token; our loop stops where it is told to
    want = ours.generate(PROMPT, new, stop_ids=eos).new_ids
    assert got == want
    assert len(got) == new or got[-1] in eos
    np.testing.assert_allclose(theirs.logits(PROMPT), ours.logits(PROMPT), atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs.logits(PROMPT, last=2), ours.logits(PROMPT)[-2:], atol=1e-4, rtol=0)
    return got


@pytest.mark.parametrize("kind,precision", [("llama", "fp32"), ("llama", "int4"), ("llama-q4", "int4")])
def test_genai_generates_the_same_greedy_tokens_as_our_loop(kind, precision):
    folder = _export(kind, precision)
    r = read_manifest(folder).report
    assert r["genai_config"] == "genai_config.json"
    if kind == "llama-q4":
        assert r["plan"]["integers"].startswith("artifact")  # its own integers, carried into MatMulNBits
    _same_greedy(folder, 24)


def test_genai_matches_our_loop_past_gemma3s_sliding_window():
    folder = _export("gemma3", "fp32")
    cfg = json.loads((folder / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "gemma3_text"  # "gemma3" is onnxruntime-genai's multimodal package type
    _same_greedy(folder, 60)  # 7 + 60 positions: past the 32-token window


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))  # one tiny model per row of compress.families
def test_every_family_row_runs_in_genai(family):
    folder = _export(family, "fp32")
    _same_greedy(folder, 8)


def test_genai_config_names_the_graphs_inputs_and_outputs():
    import onnxruntime

    folder = _export("llama", "fp32")
    cfg = json.loads((folder / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["filename"] == "model.onnx" and dec["num_hidden_layers"] == 2
    assert (dec["num_attention_heads"], dec["num_key_value_heads"], dec["head_size"]) == (6, 2, 16)
    assert cfg["model"]["type"] == "llama" and cfg["model"]["eos_token_id"] == 2
    assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == 96  # the rotary tables' length
    assert cfg["search"]["past_present_share_buffer"] is True and cfg["search"]["do_sample"] is False
    s = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    assert {dec["inputs"]["input_ids"], dec["inputs"]["attention_mask"]} <= names
    assert {dec["inputs"]["past_key_names"] % i for i in range(2)} <= names
    outs = {o.name for o in s.get_outputs()}
    assert dec["outputs"]["logits"] in outs and {dec["outputs"]["present_value_names"] % i for i in range(2)} <= outs


def test_logits_to_keep_is_optional_and_defaults_to_every_position():
    import onnxruntime

    s = onnxruntime.InferenceSession(str(_export("llama", "fp32") / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([PROMPT], np.int64), "attention_mask": np.ones((1, len(PROMPT)), np.int64)}
    for i in s.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    every = s.run(["logits"], feed)[0]
    last = s.run(["logits"], {**feed, "logits_to_keep": np.array(1, np.int64)})[0]
    assert every.shape == (1, len(PROMPT), 320) and last.shape == (1, 1, 320)
    np.testing.assert_allclose(last[0, 0], every[0, -1], atol=1e-5)


def test_genai_runtime_is_registered_and_names_its_install_command(monkeypatch, tmp_path):
    assert "onnxruntime-genai" in known_runtimes()
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if not installed
    rt = get_runtime("onnxruntime-genai")
    with pytest.raises(MissingBackendError, match="pip install onnxruntime-genai"):
        rt.load(_export("llama", "fp32"), DeviceProfile(threads=1))


def test_genai_runtime_refuses_a_folder_without_genai_config(tmp_path):
    folder = shutil.copytree(_export("llama", "fp32"), tmp_path / "old")
    (folder / "genai_config.json").unlink()
    with pytest.raises(ArtifactError, match="genai_config.json"):
        get_runtime("onnxruntime-genai").load(folder, DeviceProfile(threads=1))


def test_no_genai_config_for_per_layer_head_counts_which_genai_cannot_describe():
    from types import SimpleNamespace

    from export.onnx.arch import LayerDims, ModelDims
    from export.onnx.genai import genai_config

    layer = LayerDims(heads=6, kv_heads=2, intermediate=160, window=-1, rope="default")
    dims = ModelDims(hidden=96, head_dim=16, vocab=320, eps=1e-6, tied=False, activation="silu", max_positions=96,
                     final_softcap=None, layers=(layer, LayerDims(4, 2, 160, -1, "default")))
    config = SimpleNamespace(architectures=["LlamaForCausalLM"], eos_token_id=[2, 3], bos_token_id=1, pad_token_id=None)
    assert genai_config(dims, config, None, context_length=96) is None
    cfg = genai_config(ModelDims(**{**dims.__dict__, "layers": (layer, layer)}), config, None, context_length=96)
    assert cfg["model"]["eos_token_id"] == [2, 3] and cfg["model"]["pad_token_id"] == 2  # pad falls back to eos


def test_genai_refuses_a_sequence_longer_than_the_export_like_our_loop():
    from compress.errors import ConfigError

    ours, theirs = _both(_export("llama", "fp32"))
    assert theirs.logits(list(range(96))).shape == (96, 320)  # exactly max_length still runs
    for rt in (ours, theirs):
        with pytest.raises(ConfigError, match="--max-length"):
            rt.generate(PROMPT, 96)


def test_bench_can_run_an_onnx_export_through_genai_and_count_its_bytes():
    from compress.harness.roofline import bytes_per_token
    from compress.harness.targets import resolve_target, select_runtimes

    folder = _export("llama", "fp32")
    t = resolve_target(folder)
    assert t.native == "onnxruntime"  # our loop stays the default
    assert select_runtimes(t, ("onnxruntime-genai",)) == ["onnxruntime-genai"]
    ours, theirs = _both(folder)
    assert bytes_per_token(theirs, 10.0) == bytes_per_token(ours, 10.0)


def test_bench_rows_of_our_loop_and_genai_on_the_same_folder_agree(tmp_path):
    from test_bench import small_config

    from compress.harness import bench, read_rows

    work = tmp_path / "src"
    ref = save_tiny(work / "reference", "llama", seed=0, **LLAMA)
    onnx = export_onnx(str(ref), OnnxConfig(precision="fp32", max_length=256), work / "onnx").parent
    cfg = small_config(ref, runtimes=("onnxruntime", "onnxruntime-genai"), depths=(0,), repetitions=1)
    rows = {r["runtime"]: r for r in read_rows(bench(cfg, [f"onnx={onnx}"], tmp_path / "run"))}
    assert set(rows) == {"onnxruntime", "onnxruntime-genai"}
    ours, theirs = rows["onnxruntime"], rows["onnxruntime-genai"]
    for k in ("perplexity", "kl", "top1", "mc_mean", "bytes_per_token", "file_bytes", "artifact_id"):
        assert theirs[k] == ours[k], k  # the same file, the same numbers
    assert theirs["runtime_version"] == og.__version__ and theirs["decode_tok_s"] > 0 and theirs["new_tokens"] == 8
