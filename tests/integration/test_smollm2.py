"""SmolLM2-135M from the bundled package: evaluation, the rope guard on reload, a truncated GGUF.

Uses the real cache (~/.cache/compress, or $COMPRESS_CACHE): the first run fetches the model once.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from compress.bundled import bundled_gguf
from compress.errors import ImportMismatchError
from compress.fetch import ensure_fetched
from compress.manifest import read_manifest
from compress.models import load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_fetched("smollm2-135m")


def test_smollm2_eval_gives_sane_perplexity_and_mc_accuracy(smollm2_dir, run_cli):
    rc, out, err = run_cli("eval", "smollm2-135m", "--max-tokens", "1024", "--tasks", "sports_understanding",
                           "--mc-limit", "20", "--json")
    assert rc == 0, err
    p = json.loads(out)
    assert p["model_id"] == read_manifest(smollm2_dir).content_id
    r = p["result"]
    assert r["bos"] is False  # SmolLM2's tokenizer adds no BOS
    assert r["windows"] == 2 and r["tokens"] == 1022
    assert 10 < r["perplexity"] < 150  # about 50 with 512-token windows
    mc = r["mc"]["sports_understanding"]
    assert mc["n"] == 20 and mc["chance"] == 0.5
    assert 0 <= mc["accuracy"] <= 1 and mc["accuracy"] * 20 == round(mc["accuracy"] * 20)


def _linked_copy(src, dst):
    """A copy whose large files are symlinks; config.json is a real file so it can be edited."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == "config.json":
            shutil.copy(f, dst / f.name)
        else:
            os.symlink(f, dst / f.name)
    return dst


def test_wrong_rope_theta_in_a_copied_folder_raises_import_mismatch(smollm2_dir, tmp_path):
    copy = _linked_copy(smollm2_dir, tmp_path / "smollm2")
    ok = load_model(copy)  # the untouched copy passes the reload check against llama.cpp
    assert ok.checks["llamacpp_perplexity"] == read_manifest(smollm2_dir).report["llamacpp_perplexity"]
    del ok

    cfg_path = copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0
    # "10000.00" keeps the file's size, so the manifest's size check passes and what differs is only
    # how the folder is read: the same situation as transformers 4.57 ignoring `rope_parameters`.
    text = cfg_path.read_text()
    old = '"rope_theta": 100000.0'
    assert text.count(old) == 1
    cfg_path.write_text(text.replace(old, '"rope_theta": 10000.00'))
    assert cfg_path.stat().st_size == (smollm2_dir / "config.json").stat().st_size
    assert json.loads(cfg_path.read_text())["rope_parameters"]["rope_theta"] == 10000.0

    with pytest.raises(ImportMismatchError, match="disagree"):
        load_model(copy)


def test_truncated_bundled_gguf_is_refused_with_exit_2(tmp_path, run_cli):
    src = bundled_gguf("smollm2-135m")
    dst = tmp_path / src.name
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(src.stat().st_size // 2))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = run_cli("eval", dst)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(dst) in lines[0] and "GGUF" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
