"""The one decision every stage makes about its --out (compress.manifest.reuse_or_check): the same
content id is reused, anything else of ours is refused without --force and replaced with it, and a
folder compress did not write is never replaced."""

from __future__ import annotations

import pytest

from compress.errors import ArtifactError
from compress.evaluate import EvalConfig
from compress.manifest import ArtifactWriter, precheck_output, reuse_or_check


def _artifact(out, input_id="dir:1"):
    with ArtifactWriter(out, stage="eval", config=EvalConfig(), input_id=input_id) as art:
        (art.path / "w.bin").write_bytes(b"x")
    return out


def test_the_same_content_id_is_reused_and_another_is_refused_unless_forced(tmp_path):
    out = _artifact(tmp_path / "a")
    args = dict(stage="eval", config=EvalConfig())
    assert reuse_or_check(out, input_id="dir:1", **args) is True
    with pytest.raises(ArtifactError, match="use --force"):
        reuse_or_check(out, input_id="dir:2", **args)  # a stale artifact: never kept silently
    assert reuse_or_check(out, input_id="dir:2", force=True, **args) is False  # ours: may be replaced
    assert reuse_or_check(out, input_id="dir:1", force=True, **args) is False  # force always redoes
    assert reuse_or_check(tmp_path / "new", input_id="dir:1", **args) is False


def test_precheck_lets_our_artifact_through_and_refuses_a_foreign_folder(tmp_path):
    precheck_output(_artifact(tmp_path / "a"), force=False)  # reuse or refusal needs the input id first
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(ArtifactError):
            precheck_output(foreign, force=force)
    assert (foreign / "notes.txt").read_text() == "keep me"
