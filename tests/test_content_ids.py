"""Content ids come from content: weights retrained in place at the same size, or a calibration text
edited at the same path, give new ids, so `compress quantize` and `compress run` redo the work
instead of reusing an artifact made from the old bytes; a second look at an unchanged file reads
only its stat (the digest cache)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from compress.tiny import save_tiny

from compress.content import CACHE_FILE, file_hash, folder_id
from compress.manifest import content_id, read_manifest
from compress.quantize import QuantConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _retrain_in_place(folder: Path) -> None:
    """New weights, same names, shapes and dtypes: the safetensors file keeps its size."""
    before = (folder / "model.safetensors").stat().st_size
    save_tiny(folder, "llama", seed=1)
    assert (folder / "model.safetensors").stat().st_size == before


def test_weights_changed_in_place_at_the_same_size_change_the_folder_id(tiny_llama_dir, tmp_path):
    folder = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    first = folder_id(folder)
    assert folder_id(folder) == first
    _retrain_in_place(folder)
    assert folder_id(folder) != first


def test_a_second_look_at_an_unchanged_file_reads_only_the_cache(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    digest = file_hash(f)
    cache = json.loads((Path(os.environ["COMPRESS_CACHE"]) / CACHE_FILE).read_text())
    assert [v[3] for v in cache.values()] == [digest]

    def no_reading(*a, **k):
        raise AssertionError("the file was read again")

    monkeypatch.setattr("compress.content.open", no_reading, raising=False)
    assert file_hash(f) == digest
    monkeypatch.undo()
    f.write_bytes(b"y" * 1000)  # same size, new bytes: the stamp (mtime/inode) no longer matches
    os.utime(f, ns=(1, 1))
    assert file_hash(f) != digest


def test_calibration_text_is_keyed_by_its_bytes_and_bundled_text_by_its_name(tmp_path, monkeypatch):
    text = tmp_path / "calib.txt"
    text.write_text("call me ishmael " * 50)
    cfg = QuantConfig(scheme="int4-gptq", group_size=32, calib=str(text))
    first = content_id("quantize", cfg, "dir:1")
    assert content_id("quantize", cfg.to_dict(), "dir:1") == first  # the dict form agrees
    text.write_text("call me queequeg " * 50)
    assert content_id("quantize", cfg, "dir:1") != first
    # a bundled text adds nothing: ids of recipes on bundled data are the ones earlier releases wrote
    import hashlib

    from compress import __version__

    import compress.content

    monkeypatch.setattr(compress.content, "_source_checkout", lambda: False)  # an installed release
    plain = QuantConfig(scheme="int8")
    old = hashlib.sha256(json.dumps({"stage": "quantize", "config": plain.to_dict(), "input": "dir:1",
                                     "code": __version__}, sort_keys=True).encode()).hexdigest()[:16]
    assert content_id("quantize", plain, "dir:1") == old


def test_quantize_to_the_same_out_redoes_a_model_retrained_in_place(run_cli, tiny_llama_dir, tmp_path, caplog):
    folder = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    out = tmp_path / "q"
    args = ("quantize", folder, "--scheme", "int8", "--eval-tokens", "0", "--out", out)
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    first = read_manifest(out)
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    assert read_manifest(out).created == first.created  # unchanged weights: reused

    _retrain_in_place(folder)
    rc, _, err = run_cli(*args)
    assert rc == 2 and "use --force" in err  # not reused: a stale artifact is refused, never kept
    rc, _, err = run_cli(*args, "--force")
    assert rc == 0, err
    again = read_manifest(out)
    assert again.input_id != first.input_id and again.content_id != first.content_id


def test_run_redoes_quantize_when_weights_or_calibration_text_change_in_place(run_cli, tiny_llama_dir, tmp_path):
    folder = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    text = tmp_path / "calib.txt"
    text.write_text("the whale swam on and on, and the sea was wide and grey. " * 200)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(folder), "work_dir": str(tmp_path / "work"),
        "quantize": [{"name": "q", "scheme": "int4-gptq", "group_size": 32, "calib": str(text),
                      "samples": 4, "seq_len": 32, "eval_tokens": 0}]}))
    rc, out, err = run_cli("run", recipe)
    assert rc == 0 and out.count("ran in") == 1, err
    rc, out, err = run_cli("run", recipe)
    assert rc == 0 and "ran in" not in out, err

    text.write_text("the whale swam on and on, and the sky was wide and grey. " * 200)
    rc, out, err = run_cli("run", recipe)
    assert rc == 0 and out.count("ran in") == 1, err

    _retrain_in_place(folder)
    rc, out, err = run_cli("run", recipe)
    assert rc == 0 and out.count("ran in") == 1, err


def test_in_a_checkout_a_change_to_the_stage_s_own_source_changes_its_id(tmp_path, monkeypatch):
    """Between releases the version number does not move: the stage's source does (a changed default,
    a fixed bug), and what the old code made is not reused. Another stage's source does not matter."""
    import compress.content
    from compress.evaluate import EvalConfig

    monkeypatch.setattr(compress.content, "_source_checkout", lambda: True)
    q, e = QuantConfig(scheme="int8"), EvalConfig()
    ids = content_id("quantize", q, "dir:1"), content_id("eval", e, "dir:1")
    assert content_id("quantize", q.to_dict(), "dir:1") == ids[0]  # the dict form agrees
    pkg = Path(compress.content.__file__).parent / "quantize"
    real = compress.content._source_digest

    def edited(where):
        return "edited" if Path(where) == pkg else real(where)

    monkeypatch.setattr(compress.content, "_source_digest", edited)
    assert content_id("quantize", q, "dir:1") != ids[0]
    assert content_id("eval", e, "dir:1") == ids[1]
