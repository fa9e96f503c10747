"""The peer row (issue #14, point 5): bench measures a folder onnxruntime-genai's model builder wrote (no manifest;
genai_config.json, model.onnx, model.onnx.data, tokenizer files) beside our exports, on the same tokens as the
reference, in onnxruntime-genai's generator and in our own loop. The folder is validated at the boundary (one
``error:`` line naming genai_config.json and the field), is identified by its bytes, and needs --reference.

The folders are made by the real builder (``python -m onnxruntime_genai.models.builder``) from a tiny Llama
saved to disk: fp32, whose rows must equal the reference (so the token ids are the reference's), and int4."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from compress.errors import ArtifactError, ConfigError
from compress.harness import bench, read_rows
from compress.harness.targets import resolve_target
from compress.kinds import FOREIGN, foreign_kind
from runtimes.genai_folder import inspect_genai_folder, read_genai_folder

og = pytest.importorskip("onnxruntime_genai", reason="pip install onnxruntime-genai")

_WORK = Path(tempfile.mkdtemp(prefix="genai-folder-tests-"))
atexit.register(shutil.rmtree, _WORK, True)
LLAMA = {"num_attention_heads": 6, "num_key_value_heads": 2}  # head_dim 16: GroupQueryAttention needs x16


@functools.lru_cache(maxsize=None)
def _reference() -> Path:
    from compress.tiny import save_tiny

    return save_tiny(_WORK / "reference", "llama", seed=0, **LLAMA)


@functools.lru_cache(maxsize=None)
def _built(precision: str) -> Path:
    """The builder's folder for the tiny reference, as a user makes it (a few seconds on a tiny config)."""
    out = _WORK / f"builder-{precision}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(_reference()),
                           "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(_WORK / "hf-cache")],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"onnxruntime-genai's builder failed on the tiny Llama: {proc.stderr[-2000:]}")
    return out


def _broken(tmp_path: Path, edit) -> Path:
    folder = shutil.copytree(_built("int4"), tmp_path / "broken")
    cfg = json.loads((folder / "genai_config.json").read_text())
    edit(cfg)
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    return folder


def test_a_builder_folder_is_a_foreign_kind_with_both_runtimes_an_id_from_its_bytes_and_its_weight_files():
    folder = _built("int4")
    assert not (folder / "manifest.json").exists()
    assert foreign_kind(folder) is FOREIGN[0] and foreign_kind(_reference()) is None
    t = resolve_target(f"builder={folder}")
    assert t.stage == "genai-folder" and t.foreign and t.source is None
    assert t.loaders == {"onnxruntime-genai": str(folder), "onnxruntime": str(folder)}  # the generator first
    assert t.file_bytes == sum((folder / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert t.artifact_id.startswith("genai-folder:")
    assert resolve_target(folder).artifact_id == t.artifact_id
    moved = shutil.copytree(folder, _WORK / "moved")  # the same bytes elsewhere: the same artifact
    assert resolve_target(moved).artifact_id == t.artifact_id
    (moved / "model.onnx.data").write_bytes((folder / "model.onnx.data").read_bytes()[:-4] + b"\0\0\0\0")
    assert resolve_target(moved).artifact_id != t.artifact_id  # weights changed in place, at the same size


def test_bench_scores_builder_folders_on_the_reference_tokens_in_both_loops(tmp_path):
    from test_bench import small_config

    fp32, int4 = _built("fp32"), _built("int4")
    cfg = small_config(_reference(), runtimes=("onnxruntime-genai", "onnxruntime"), depths=(0,), repetitions=1,
                       new_tokens=4, roofline=False)
    run = bench(cfg, [f"b-fp32={fp32}", f"b-int4={int4}"], tmp_path / "run")
    rows = {(r["label"], r["runtime"]): r for r in read_rows(run)}
    assert set(rows) == {(label, rt) for label in ("b-fp32", "b-int4") for rt in ("onnxruntime-genai", "onnxruntime")}
    for (label, runtime), r in rows.items():
        assert r["stage"] == "genai-folder" and r["artifact_id"].startswith("genai-folder:")
        for k in ("perplexity", "kl", "top1", "mc_mean", "tokens"):
            assert r[k] is not None, (label, runtime, k)
        assert r["new_tokens"] == 4 and r["kv_bytes_per_token"] > 0  # the builder's symbolic head size resolved
    # fp32 through either loop is the reference itself: only the same token ids give KL ~0 and every top-1 equal
    for rt in ("onnxruntime-genai", "onnxruntime"):
        assert rows[("b-fp32", rt)]["kl"] < 1e-4 and rows[("b-fp32", rt)]["top1"] == 1.0
        assert rows[("b-int4", rt)]["kl"] > rows[("b-fp32", rt)]["kl"]
    for label in ("b-fp32", "b-int4"):  # one file, two loops, the same numbers
        ours, theirs = rows[(label, "onnxruntime")], rows[(label, "onnxruntime-genai")]
        assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5)
        assert ours["bytes_per_token"] == theirs["bytes_per_token"]


def test_bench_refuses_a_builder_folder_without_a_reference_in_one_line(tmp_path, run_cli):
    from compress.harness import BenchConfig

    with pytest.raises(ConfigError, match="no manifest.json to name the model .* pass --reference"):
        bench(BenchConfig(), [_built("int4")], tmp_path / "run")
    rc, _, err = run_cli("bench", f"builder={_built('int4')}", "--out", tmp_path / "run", "--no-latency")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "--reference" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_a_genai_config_missing_a_field_is_one_error_line_naming_it(tmp_path, run_cli):
    folder = _broken(tmp_path, lambda c: c["model"]["decoder"].pop("head_size"))
    rc, _, err = run_cli("bench", f"builder={folder}", "--reference", _reference(), "--out", tmp_path / "run",
                         "--no-latency")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and "genai_config.json: model.decoder.head_size is missing" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["model"].update(vision={"filename": "vision.onnx"}), "model.vision: a multimodal package"),
    (lambda c: c["model"]["decoder"].update(pipeline=[{}]), "model.decoder.pipeline"),
    (lambda c: c["model"]["decoder"].update(filename="gone.onnx"), "'gone.onnx', which is not in"),
    (lambda c: c["search"].update(max_length="long"), "search.max_length is 'long'; expected a positive int"),
    (lambda c: c.pop("model"), "model is missing"),
])
def test_folders_that_are_not_a_text_decoder_we_can_run_are_refused_naming_the_field(tmp_path, edit, needle):
    folder = _broken(tmp_path, edit)
    with pytest.raises(ArtifactError, match="genai_config.json: ") as e:
        resolve_target(folder)
    assert needle in str(e.value)
    (folder / "genai_config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="genai_config.json: not readable JSON"):
        read_genai_folder(folder)


def test_a_graph_our_loop_cannot_feed_runs_in_genai_only_and_says_why(tmp_path):
    from runtimes import DeviceProfile, get_runtime

    folder = _broken(tmp_path, lambda c: c["model"]["decoder"]["inputs"].update(past_key_names="past_key.%d"))
    report = inspect_genai_folder(folder)
    assert report["our_loop"] is None and "past_key_names is 'past_key.%d'" in report["our_loop_refused"]
    assert list(resolve_target(folder).loaders) == ["onnxruntime-genai"]
    with pytest.raises(ArtifactError, match="our onnxruntime loop cannot drive this graph"):
        get_runtime("onnxruntime").load(folder, DeviceProfile(threads=1))
