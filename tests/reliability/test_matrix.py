"""Reliability and security matrix: every command, bad input of every kind, interrupts and kills.

Each case asserts the exit code, the single line on stderr (what is wrong and where), and that no
artifact is left looking complete. Ctrl-C and kill -9 cases run the CLI in a subprocess
(tests/reliability/pause.py stops it half-way through a stage, then the test signals it).

Cases:
 1. chat: artifact that does not exist
 2. chat: truncated .gguf file
 3. chat: export whose model file was truncated after writing (manifest size check)
 4. chat: unfinished artifact (folder without manifest.json)
 5. chat: hostile chat template inside a GGUF (sandbox escape attempt)
 6. chat: artifact over the profile's memory budget
 7. chat: unknown device profile
 8. chat: unknown key in a --config file (with a suggestion)
 9. chat: a stage artifact that is not an export (wrong artifact kind)
10. run: recipe file missing
11. run: recipe that is not YAML
12. run: unknown recipe key (with a suggestion)
13. run: output name escaping work_dir (../)
14. run: work_dir that cannot be created (under a regular file)
15. run: existing output folder that is not this stage's artifact (left untouched)
16. run: group size incompatible with the layer widths (found by --dry-run, nothing written)
17. run: empty calibration data
18. run: check section whose baseline file is missing
19. run: disk full while a stage writes (ENOSPC): one line, no artifact, no temporary left
20. run: model of the wrong architecture (not a causal LM)
21. quantize: pickle-only checkpoint (pytorch_model.bin) refused
22. quantize: model that asks for trust_remote_code refused
23. quantize: truncated safetensors
24. quantize: model path that does not exist
25. export: artifact with a corrupt manifest.json
26. export: existing non-empty output without --force
27. export: unknown GGUF type (with a suggestion)
28. eval: empty evaluation data
29. bench: unknown device profile
30. export: Ctrl-C (SIGINT) half-way: exit 130, no traceback, no artifact, no temporary, a re-run succeeds
31. export: kill -9 half-way: no artifact, the re-run succeeds and removes the dead temporary
32. distill: Ctrl-C (SIGINT) half-way: exit 130, no traceback, no artifact; --resume finishes
33. distill: kill -9 half-way: no artifact; --resume finishes from the last checkpoint
34. run: kill -9 during an export stage: the re-run keeps the finished stages and completes the rest

Cases 35 onwards (issue 17: outputs overlapping inputs, non-finite numbers, threads, input files,
one-line usage errors, temporaries) are listed in tests/reliability/test_matrix_inputs.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress.manifest import is_complete

PAUSE = Path(__file__).with_name("pause.py")
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


def fails(result, *fragments: str, code: int = 2) -> str:
    """Exit ``code`` and exactly one line on stderr ('error: ...') holding every fragment."""
    rc, out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, f"exit {rc}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err}"
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def nothing_complete(out: Path) -> None:
    """Neither the output nor anything beside it under its name looks like a finished artifact."""
    assert not is_complete(out), f"{out} looks complete"
    if out.parent.is_dir():
        for p in out.parent.glob(f"*{out.name}*"):
            assert not (p / "manifest.json").is_file(), f"{p} carries a manifest"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from compress.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("rel") / "tiny", "llama")


@pytest.fixture(scope="module")
def gguf(tiny, tmp_path_factory) -> Path:
    from export.gguf import GGUFConfig, export_gguf

    return export_gguf(tiny, GGUFConfig(qtype="F32", check_tokens=32), tmp_path_factory.mktemp("rel") / "gguf").parent


def recipe(tmp_path: Path, model, **sections) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"model": str(model), "work_dir": str(tmp_path / "work"), **sections}))
    return p


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, COMPRESS_CACHE=str(tmp_path / "cache"), COMPRESS_PROGRESS="0", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def interrupt(tmp_path: Path, target: str, args: list[str], sig: int) -> tuple[int, str, str]:
    """Start the CLI paused after ``target`` ran, send ``sig``, return (exit code, stdout, stderr)."""
    ready = tmp_path / f"ready-{sig}"
    proc = subprocess.Popen([sys.executable, str(PAUSE), str(ready), target, "--", *map(str, args)],
                            env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ready.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended before the pause point (exit {proc.returncode}): {err[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the command never reached the pause point")
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def temporaries(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.tmp-*"))


# ---- chat --------------------------------------------------------------------------------------------

def test_01_chat_missing_artifact(tmp_path, run_cli):
    fails(run_cli("chat", tmp_path / "nope", "--once", "hi"), "nope: artifact does not exist")


def test_02_chat_truncated_gguf_file(gguf, tmp_path, run_cli):
    f = tmp_path / "cut.gguf"
    data = next(gguf.glob("*.gguf")).read_bytes()
    f.write_bytes(data[: len(data) // 2])
    fails(run_cli("chat", f, "--once", "hi"), "cut.gguf", "truncated")


def test_03_chat_export_with_truncated_model_file(gguf, tmp_path, run_cli):
    art = tmp_path / "art"
    shutil.copytree(gguf, art)
    model = next(art.glob("*.gguf"))
    with open(model, "r+b") as fh:
        fh.truncate(model.stat().st_size - 100)
    fails(run_cli("chat", art, "--once", "hi"), "corrupt artifact", model.name)


def test_04_chat_unfinished_artifact(gguf, tmp_path, run_cli):
    art = tmp_path / "unfinished"
    shutil.copytree(gguf, art)
    (art / "manifest.json").unlink()
    fails(run_cli("chat", art, "--once", "hi"), "no manifest.json")


def test_05_chat_hostile_template_in_gguf(tiny, tmp_path, run_cli):
    from export.gguf import GGUFConfig, export_gguf

    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    (src / "chat_template.jinja").write_text(HOSTILE)
    art = export_gguf(src, GGUFConfig(qtype="F32", check_tokens=32), tmp_path / "evil").parent
    rc, out, err = run_cli("chat", art, "--once", "hi")
    fails((rc, out, err), "unsafe chat template refused by the sandbox")
    assert out == ""  # nothing generated


def test_06_chat_over_profile_budget(gguf, tmp_path, run_cli):
    prof = tmp_path / "watch.yaml"
    prof.write_text("name: watch\nthreads: 1\nmemory_budget_mb: 32\n")
    fails(run_cli("chat", gguf, "--profile", prof, "--once", "hi"), "over the 'watch' profile's memory budget of 32 MB")


def test_07_chat_unknown_profile(gguf, run_cli):
    fails(run_cli("chat", gguf, "--profile", "fone", "--once", "hi"), "unknown profile 'fone'", "did you mean 'phone'")


def test_08_chat_unknown_config_key(gguf, tmp_path, run_cli):
    cfg = tmp_path / "chat.yaml"
    cfg.write_text("max_tokens: 5\n")
    fails(run_cli("chat", gguf, "--config", cfg, "--once", "hi"), "unknown key 'max_tokens'",
          "did you mean 'max_new_tokens'")


def test_09_chat_on_a_quantize_artifact(tiny, tmp_path, run_cli):
    from compress.quantize import QuantConfig, run_quantize

    q = run_quantize(str(tiny), QuantConfig(scheme="int8", eval_tokens=0), tmp_path / "q")
    fails(run_cli("chat", q, "--once", "hi"), "'quantize' artifact cannot chat")


# ---- run ---------------------------------------------------------------------------------------------

def test_10_run_missing_recipe(tmp_path, run_cli):
    fails(run_cli("run", tmp_path / "none.yaml"), "none.yaml: recipe file does not exist")


def test_11_run_recipe_not_yaml(tmp_path, run_cli):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    fails(run_cli("run", p), "bad.yaml: not valid YAML")


def test_12_run_unknown_recipe_key(tiny, tmp_path, run_cli):
    fails(run_cli("run", recipe(tmp_path, tiny, exports=[])), "unknown key 'exports'", "did you mean 'export'")


def test_13_run_output_escaping_work_dir(tiny, tmp_path, run_cli):
    r = recipe(tmp_path, tiny, quantize=[{"name": "../../etc", "scheme": "int8"}])
    fails(run_cli("run", r), "'../../etc' must be a plain folder name", "outputs stay inside work_dir")
    assert not (tmp_path / "work").exists()


def test_14_run_work_dir_not_writable(tiny, tmp_path, run_cli):
    (tmp_path / "file").write_text("x")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"model": str(tiny), "work_dir": str(tmp_path / "file" / "work"),
                                 "quantize": [{"name": "q", "scheme": "int8", "eval_tokens": 0}]}))
    fails(run_cli("run", p), "work_dir cannot be created or written")


def test_15_run_existing_foreign_output(tiny, tmp_path, run_cli):
    r = recipe(tmp_path, tiny, quantize=[{"name": "q", "scheme": "int8", "eval_tokens": 0}])
    mine = tmp_path / "work" / "quantize-q"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    fails(run_cli("run", r), "output folder exists and is not an artifact")
    assert (mine / "keep.txt").read_text() == "mine" and not (mine / "manifest.json").exists()


def test_16_run_incompatible_group_size(tiny, tmp_path, run_cli):
    r = recipe(tmp_path, tiny, quantize=[{"name": "q", "scheme": "int4-rtn", "group_size": 64, "eval_tokens": 0}])
    fails(run_cli("run", r, "--dry-run"), "quantize q: group size 64 does not divide", "(96)")
    fails(run_cli("run", r), "group size 64 does not divide")
    nothing_complete(tmp_path / "work" / "quantize-q")


def test_17_run_empty_calibration_data(tiny, tmp_path, run_cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = recipe(tmp_path, tiny, quantize=[{"name": "q", "scheme": "int4-gptq", "group_size": 32, "calib": str(empty),
                                          "eval_tokens": 0}])
    fails(run_cli("run", r), "empty.txt: text is empty")
    nothing_complete(tmp_path / "work" / "quantize-q")


def test_18_run_missing_baseline(tiny, tmp_path, run_cli):
    r = recipe(tmp_path, tiny, export=[{"name": "g", "format": "gguf", "qtype": "F32"}],
               bench=[{"name": "b", "reference": str(tiny)}], check={"baseline": str(tmp_path / "base.json")})
    fails(run_cli("run", r, "--dry-run"), "base.json does not exist")


def test_19_run_disk_full(tiny, tmp_path, run_cli, monkeypatch):
    import compress.quantize.run as qrun

    def full(path, *a, **kw):
        (Path(path) / "model.safetensors").write_bytes(b"\0" * 1000)  # some data made it before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / "model.safetensors"))

    monkeypatch.setattr(qrun, "save_artifact", full)
    r = recipe(tmp_path, tiny, quantize=[{"name": "q", "scheme": "int8", "eval_tokens": 0}])
    fails(run_cli("run", r), "quantize q: No space left on device while writing", "nothing was kept")
    out = tmp_path / "work" / "quantize-q"
    nothing_complete(out)
    assert not out.exists() and temporaries(out) == []


def test_20_run_wrong_architecture(tiny, tmp_path, run_cli):
    bert = tmp_path / "bert"
    shutil.copytree(tiny, bert)
    cfg = json.loads((bert / "config.json").read_text())
    cfg.update(architectures=["BertForMaskedLM"], model_type="bert")
    (bert / "config.json").write_text(json.dumps(cfg))
    r = recipe(tmp_path, bert, quantize=[{"name": "q", "scheme": "int8", "eval_tokens": 0}])
    fails(run_cli("run", r, "--dry-run"), "BertForMaskedLM is not a causal language model")
    nothing_complete(tmp_path / "work" / "quantize-q")


# ---- quantize / export / eval / bench ----------------------------------------------------------------

def test_21_quantize_pickle_checkpoint(tiny, tmp_path, run_cli):
    import torch
    from safetensors.torch import load_file

    pk = tmp_path / "pickled"
    shutil.copytree(tiny, pk)
    torch.save(load_file(str(pk / "model.safetensors")), pk / "pytorch_model.bin")
    (pk / "model.safetensors").unlink()
    out = tmp_path / "q"
    fails(run_cli("quantize", pk, "--scheme", "int8", "--out", out), "only pickle checkpoints (pytorch_model.bin)")
    nothing_complete(out)


def test_22_quantize_trust_remote_code_model(tiny, tmp_path, run_cli):
    rc_dir = tmp_path / "remote"
    shutil.copytree(tiny, rc_dir)
    cfg = json.loads((rc_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (rc_dir / "config.json").write_text(json.dumps(cfg))
    (rc_dir / "modeling_evil.py").write_text("raise SystemExit('this code must never run')\n")
    out = tmp_path / "q"
    fails(run_cli("quantize", rc_dir, "--scheme", "int8", "--out", out), "asks to run its own code",
          "--trust-remote-code")
    nothing_complete(out)


def test_23_quantize_truncated_safetensors(tiny, tmp_path, run_cli):
    cut = tmp_path / "cut"
    shutil.copytree(tiny, cut)
    w = cut / "model.safetensors"
    with open(w, "r+b") as fh:
        fh.truncate(w.stat().st_size // 2)
    out = tmp_path / "q"
    fails(run_cli("quantize", cut, "--scheme", "int8", "--out", out), "truncated safetensors")
    nothing_complete(out)


def test_24_quantize_missing_model(tmp_path, run_cli):
    out = tmp_path / "q"
    fails(run_cli("quantize", tmp_path / "missing", "--scheme", "int8", "--out", out), "path does not exist")
    nothing_complete(out)


def test_25_export_corrupt_manifest(gguf, tiny, tmp_path, run_cli):
    from compress.quantize import QuantConfig, run_quantize

    q = run_quantize(str(tiny), QuantConfig(scheme="int8", group_size=32, eval_tokens=0), tmp_path / "q")
    (q / "manifest.json").write_text('{"stage": "quantize", "config": ')
    out = tmp_path / "g"
    fails(run_cli("export", q, "--format", "gguf", "--qtype", "Q8_0", "--out", out), "corrupt manifest")
    nothing_complete(out)


def test_26_export_existing_output_without_force(tiny, tmp_path, run_cli):
    out = tmp_path / "g"
    out.mkdir()
    (out / "other.txt").write_text("keep")
    fails(run_cli("export", tiny, "--format", "gguf", "--qtype", "F32", "--out", out),
          "output directory exists and is not empty")
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]


def test_27_export_unknown_gguf_type(tiny, tmp_path, run_cli):
    out = tmp_path / "g"
    fails(run_cli("export", tiny, "--format", "gguf", "--qtype", "Q4_KM", "--out", out), "'Q4_KM' is not a GGUF type",
          "did you mean 'Q4_K_M'")
    nothing_complete(out)


def test_28_eval_empty_data(tiny, tmp_path, run_cli):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    fails(run_cli("eval", tiny, "--data", empty, "--tasks", ""), "e.txt: text is empty")


def test_29_bench_unknown_profile(gguf, tmp_path, run_cli):
    out = tmp_path / "b"
    fails(run_cli("bench", gguf, "--profile", "nokia-3310", "--out", out), "unknown profile 'nokia-3310'")
    nothing_complete(out)


# ---- interrupts and kills (subprocess) -----------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["30-ctrl-c", "31-kill-9"])
def test_30_31_export_interrupted(sig, tiny, tmp_path, run_cli):
    out = tmp_path / "g"
    args = ["export", tiny, "--format", "gguf", "--qtype", "F32", "--check-tokens", "32", "--out", out]
    rc, _, err = interrupt(tmp_path, "export.gguf.export:write_gguf", args, sig)
    if sig == signal.SIGINT:
        assert rc == 130 and "Traceback" not in err, err
        assert temporaries(out) == []  # Ctrl-C lets the writer clean up
    else:
        assert rc == -signal.SIGKILL
        assert temporaries(out), "kill -9 leaves the temporary folder (and only that)"
    nothing_complete(out)
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    assert is_complete(out) and temporaries(out) == []


@pytest.fixture(scope="module")
def student(tiny, tmp_path_factory) -> Path:
    from compress.prune import PruneConfig, prune

    return prune(str(tiny), PruneConfig(method="depth", layers=1, samples=4, seq_len=64, eval_tokens=0),
                 tmp_path_factory.mktemp("rel") / "student")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["32-ctrl-c", "33-kill-9"])
def test_32_33_distill_interrupted(sig, tiny, student, tmp_path, run_cli):
    out = tmp_path / "d"
    args = ["distill", "--teacher", tiny, "--student", student, "--steps", "6", "--seq-len", "32", "--batch", "2",
            "--warmup", "1", "--checkpoint-every", "2", "--eval-every", "3", "--eval-tokens", "64", "--threads", "1",
            "--out", out]
    rc, _, err = interrupt(tmp_path, "compress.distill.checkpoint:CheckpointDir.save", args, sig)
    if sig == signal.SIGINT:
        assert rc == 130 and "Traceback" not in err, err
    else:
        assert rc == -signal.SIGKILL
    nothing_complete(out)
    rc, _, err = run_cli(*args, "--resume")
    assert rc == 0, err
    assert is_complete(out)


def test_34_run_killed_during_export_resumes(tiny, tmp_path, run_cli):
    r = recipe(tmp_path, tiny, quantize=[{"name": "q", "scheme": "int8", "group_size": 32, "eval_tokens": 0}],
               export=[{"name": "g", "format": "gguf", "from": "q", "qtype": "Q8_0", "check_tokens": 32}])
    work = tmp_path / "work"
    rc, _, err = interrupt(tmp_path, "export.gguf.export:write_gguf", ["run", r], signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert is_complete(work / "quantize-q")
    nothing_complete(work / "export-g")
    rc, out, err = run_cli("run", r)
    assert rc == 0, err
    assert "quantize q" in out and "done (cached)" in out and out.count("ran in") == 1
    assert is_complete(work / "export-g") and temporaries(work / "export-g") == []
