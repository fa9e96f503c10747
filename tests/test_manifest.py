"""Artifacts appear under their final name only when complete, and a damaged one is caught on read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from compress.errors import ArtifactError
from compress.evaluate import EvalConfig
from compress.manifest import MANIFEST, ArtifactWriter, content_id, is_complete, read_manifest


def _entries(d):
    return sorted(p.name for p in d.iterdir())


def _write(out, *, force=False, cfg=None, input_id="in:1"):
    with ArtifactWriter(out, stage="test", config=cfg or EvalConfig(), input_id=input_id, force=force) as art:
        (art.path / "weights.bin").write_bytes(b"x" * 1000)
        (art.path / "sub").mkdir()
        (art.path / "sub" / "notes.txt").write_text("hello")
        art.report["perplexity"] = 12.5
    return art


def test_writer_success_writes_manifest_with_file_sizes(tmp_path):
    out = tmp_path / "art"
    art = _write(out)
    assert _entries(tmp_path) == ["art"]  # no temporary left beside it
    m = read_manifest(out)
    assert m.files == {"sub/notes.txt": 5, "weights.bin": 1000}
    assert m.stage == "test"
    assert m.config == EvalConfig().to_dict()
    assert m.input_id == "in:1"
    assert m.content_id == art.content_id == content_id("test", EvalConfig(), "in:1")
    assert m.report == {"perplexity": 12.5}
    assert "torch" in m.versions and "python" in m.versions
    assert json.loads((out / MANIFEST).read_text())["files"]["weights.bin"] == 1000
    assert is_complete(out) and is_complete(out, m.content_id) and not is_complete(out, "other")


def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(ValueError):
        with ArtifactWriter(out, stage="test", config=EvalConfig(), input_id=None) as art:
            (art.path / "weights.bin").write_bytes(b"x" * 100)
            raise ValueError("boom")
    assert _entries(tmp_path) == []


def test_keyboard_interrupt_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(out, stage="test", config=EvalConfig(), input_id=None) as art:
            (art.path / "weights.bin").write_bytes(b"x" * 100)
            assert art.path.name.startswith(".art.tmp-")
            raise KeyboardInterrupt
    assert _entries(tmp_path) == []


def test_failed_forced_rewrite_keeps_the_previous_artifact(tmp_path):
    out = tmp_path / "art"
    _write(out)
    before = read_manifest(out)
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out, stage="test", config=EvalConfig(window=64, stride=64), input_id="x", force=True):
            raise RuntimeError("crash")
    assert read_manifest(out) == before
    assert _entries(tmp_path) == ["art"]


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from compress.fetch import FetchConfig  # light import: no torch
    from compress.manifest import ArtifactWriter
    with ArtifactWriter(sys.argv[1], stage="test", config=FetchConfig(), input_id=None) as art:
        (art.path / "weights.bin").write_bytes(b"x" * 100000)
        print(art.path, flush=True)
        time.sleep(120)
""")


def test_kill_9_while_writing_leaves_only_a_hidden_temp_that_the_next_writer_removes(tmp_path):
    out = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        temp_path = proc.stdout.readline().strip()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert temp_path, "the writer subprocess never reached the middle of writing"
    left = _entries(tmp_path)
    assert left == [os.path.basename(temp_path)]
    assert left[0].startswith(f".art.tmp-{proc.pid}-")
    assert not out.exists() and not is_complete(out)

    _write(out)
    assert _entries(tmp_path) == ["art"]  # the dead writer's temporary is gone
    assert read_manifest(out).files["weights.bin"] == 1000


def test_temp_of_a_live_writer_is_left_alone(tmp_path):
    out = tmp_path / "art"
    live = tmp_path / f".art.tmp-{os.getppid()}-abcd1234"  # our parent process is alive
    live.mkdir()
    _write(out)
    assert _entries(tmp_path) == [live.name, "art"]


def test_existing_non_empty_output_is_refused_unless_force(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not empty"):
        _write(out)
    assert _entries(out) == ["precious.txt"]
    assert _entries(tmp_path) == ["art"]
    # issue 17: --force replaces only what compress wrote; a folder of the user's files stays as it was
    with pytest.raises(ArtifactError, match="not a compress artifact"):
        _write(out, force=True)
    assert _entries(out) == ["precious.txt"] and _entries(tmp_path) == ["art"]


def test_force_replaces_one_of_our_artifacts(tmp_path):
    out = tmp_path / "art"
    _write(out, cfg=EvalConfig(window=64, stride=64))
    (out / "weights.bin").write_bytes(b"x")  # a truncated file of ours may still be replaced
    _write(out, force=True)
    assert _entries(out) == [MANIFEST, "sub", "weights.bin"] and read_manifest(out).config["window"] == 512
    assert _entries(tmp_path) == ["art"]  # the replaced directory is not left behind


def test_existing_empty_output_directory_is_used(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    _write(out)
    assert read_manifest(out).files["weights.bin"] == 1000


def test_truncated_file_makes_read_manifest_raise(tmp_path):
    out = tmp_path / "art"
    _write(out)
    os.truncate(out / "weights.bin", 999)
    with pytest.raises(ArtifactError, match=r"weights\.bin.*999 bytes but the manifest says 1000"):
        read_manifest(out)
    assert not is_complete(out)
    read_manifest(out, check_files=False)  # the manifest itself is still readable


def test_missing_listed_file_makes_read_manifest_raise(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / "sub" / "notes.txt").unlink()
    with pytest.raises(ArtifactError, match=r"sub/notes\.txt.*missing"):
        read_manifest(out)


def test_corrupt_or_absent_manifest_is_an_artifact_error(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        read_manifest(out)
    (out / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_manifest(out)
    with pytest.raises(ArtifactError, match="does not exist"):
        read_manifest(tmp_path / "nope")


def test_content_id_changes_with_config_and_input_id():
    base = content_id("eval", EvalConfig(), "dir:1")
    assert base == content_id("eval", EvalConfig(), "dir:1")
    assert base == content_id("eval", EvalConfig().to_dict(), "dir:1")
    assert base != content_id("eval", EvalConfig(window=256, stride=256), "dir:1")
    assert base != content_id("eval", EvalConfig(), "dir:2")
    assert base != content_id("eval", EvalConfig(), None)
    assert base != content_id("fetch", EvalConfig(), "dir:1")


def test_content_id_changes_with_the_code_release(monkeypatch):
    """An artifact made by another release of compress is not reused as if it were this one's work."""
    import compress

    base = content_id("eval", EvalConfig(), "dir:1")
    monkeypatch.setattr(compress, "__version__", "999.0")
    assert content_id("eval", EvalConfig(), "dir:1") != base


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_writer_refuses_safetensors_with_non_finite_values(tmp_path, dtype, bad, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from compress.errors import NonFiniteError

    out = tmp_path / "art"
    monkeypatch.setattr("compress.finite._CHUNK", 64)  # the bad value sits many reads into the tensor
    w = torch.zeros(3, 700, dtype=getattr(torch, dtype))
    w[2, 699] = bad
    with pytest.raises(NonFiniteError, match=r"model.safetensors: tensor 'b.weight' holds NaN or infinite"):
        with ArtifactWriter(out, stage="test", config=EvalConfig(), input_id=None) as art:
            save_file({"a.weight": torch.ones(4, dtype=getattr(torch, dtype)), "b.weight": w},
                      str(art.path / "model.safetensors"))
    assert _entries(tmp_path) == []


def test_writer_keeps_finite_extremes(tmp_path):
    import torch
    from safetensors.torch import save_file

    with ArtifactWriter(tmp_path / "art", stage="test", config=EvalConfig(), input_id=None) as art:
        save_file({"w": torch.tensor([65504.0, -65504.0, 0.0], dtype=torch.float16),
                   "i": torch.tensor([-1, 2**31 - 1], dtype=torch.int32)}, str(art.path / "model.safetensors"))
    assert is_complete(tmp_path / "art")


def test_failed_swap_under_force_puts_the_previous_artifact_back(tmp_path, monkeypatch):
    import compress.manifest as manifest

    out = tmp_path / "art"
    _write(out, cfg=EvalConfig(window=64, stride=64))
    before = read_manifest(out)
    real = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".art.tmp-"):  # the new artifact cannot move into place
            raise OSError(5, "Input/output error", str(src))
        real(src, dst)

    monkeypatch.setattr(manifest.os, "rename", rename)
    with pytest.raises(OSError):
        _write(out, force=True)
    assert read_manifest(out) == before and _entries(tmp_path) == ["art"]


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")], ids=["finite", "nan", "inf"])
def test_writer_refuses_a_gguf_with_non_finite_float_tensors(tmp_path, bad):
    import numpy as np
    from gguf import GGUFWriter

    from compress.errors import NonFiniteError

    def write(path):
        w = GGUFWriter(str(path), "llama")
        w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float16))
        t = np.zeros((3, 64), dtype=np.float32)
        if bad is not None:
            t[2, 63] = bad
        w.add_tensor("output.weight", t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    out = tmp_path / "art"
    if bad is None:
        with ArtifactWriter(out, stage="test", config=EvalConfig(), input_id=None) as art:
            write(art.path / "model.F32.gguf")
        assert is_complete(out)
        return
    with pytest.raises(NonFiniteError, match=r"model.F32.gguf: tensor 'output.weight' holds NaN or infinite"):
        with ArtifactWriter(out, stage="test", config=EvalConfig(), input_id=None) as art:
            write(art.path / "model.F32.gguf")
    assert _entries(tmp_path) == []


def test_info_shows_the_chain_an_artifact_was_made_from(tmp_path, run_cli):
    """export <- quantize <- the model: each link's stage and content id, from the manifests' inputs."""
    from compress.manifest import lineage

    with ArtifactWriter(tmp_path / "q", stage="test", config=EvalConfig(), input_id="model-id-1") as a:
        a.report["input"] = "my-model"
    with ArtifactWriter(tmp_path / "e", stage="test", config=EvalConfig(window=256, stride=256),
                        input_id=a.content_id) as b:
        b.report["input"] = str(tmp_path / "q")
    chain = lineage(tmp_path / "e")
    assert [(c["stage"], c["content_id"]) for c in chain] == [("test", b.content_id), ("test", a.content_id),
                                                              ("model", "model-id-1")]
    assert chain[-1]["path"] == "my-model" and chain[0]["input_id"] == chain[1]["content_id"]
    rc, out, err = run_cli("info", tmp_path / "e")
    assert rc == 0, err
    assert "chain" in out and "<- model model-id-1" in out
