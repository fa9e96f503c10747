"""Reliability matrix, part 2 (issue 17): what a new user typed that lost data or passed a wrong result.

Same rules as test_matrix.py (cases 1-34): each case asserts the exit code, the single ``error:`` line
naming what is wrong, that every input is byte-for-byte untouched, and that nothing looks complete.

Cases:
35. export gguf: --out is the input artifact, --force (the input was deleted)
36. quantize: --out is the input model folder, --force (the fp32 model was replaced)
37. bench: --out is the measured artifact, --force (the GGUF was deleted)
38. export: --out is the parent of the input, --force (input and an unrelated file were deleted)
39. export: --out inside the input artifact
40. export: --force on a non-empty folder that is not one of our artifacts (left untouched)
41. export: --out is a symlink to one of our artifacts, --force: replaced through the link, no stray
    .NAME.old-* link, no temporary left
42. quantize: --out is the cache folder of the bundled model given as input
43. distill: --lr inf (and nan) refused before any work
44. distill: an lr whose one step overflows the logits, or the update itself: stops with a line before
    any checkpoint or artifact (never a traceback, never weights that score nan)
45. eval: a model with NaN weights: refused with the tensors named, never perplexity nan with exit 0
46. check: --tolerance ppl=nan refused
47. check: a baseline whose metrics are NaN refused (naming row and metric)
48. chat: a profile with memory_budget_mb: .nan refused (the memory guard was skipped)
49. quantize: --config with a float field .inf refused, naming file and field
50. quantize: a legal 240-character --out name works (the hidden temp name stays short)
51. export: a dead process's temporary of another output in the same parent is swept; a live one and
    the user's own hidden files are kept
52. chat: --threads 100000: clamped to the cores, said once (llama.cpp segfaulted)
53. eval: --threads 100000: clamped, said once, a perplexity (it printed an error, then segfaulted)
54. info / chat: a manifest whose files is a string, whose report is a list, or whose files escape the
    artifact: one line naming the field (was a traceback)
55. info: a manifest giving a key twice
56. run: a recipe with two quantize: keys (only the second was planned)
57. quantize: a --config file giving a key twice (the last was kept silently)
58. chat: a GGUF whose metadata holds a string that is not UTF-8: refused naming the key (llama.cpp
    dropped all metadata and chatted without the template)
59. chat: --once text with invalid UTF-8: bytes replaced with U+FFFD and said (was a traceback)
60. quantize: --group-size 32.5 and a misspelt option: one error line naming option and value (was
    typer's usage block)
61. prune: --target ffn=abc blames the value, not the key
62. run: recipe name: 8 (a YAML integer) says to quote it
63. check --baseline DIR, quantize --config DIR: "is a directory, expected a ... file"
64. models: COMPRESS_CACHE pointing at a file is named
65. eval: a GGUF export folder evaluates its GGUF (said "no config.json")
66. quantize: config.json with num_hidden_layers: 0 names the file and the field
67. eval: a truncated tokenizer.json names the file
68. quantize/eval --save-config and check --update-baseline pointing inside an input: refused (the
    model's own config.json, the run's rows.jsonl were overwritten)
69. export --force onto one of our artifacts that also holds a file of the user's: refused, untouched
70. run: the recipe's model is a prune artifact where its prune stage writes: refused, untouched
71. export: an --out name that is not UTF-8: refused before any work, naming it (was found after
    writing the whole GGUF, and blamed on the file)
72. distill: --checkpoint-dir on an input (--force would clear it) or equal to --out (the whole run
    trained, then the artifact was refused): refused before training
73. run: a recipe field .nan: refused naming the section and field
74. chat: a REPL line with invalid UTF-8 on stdin: replaced and said, the chat goes on (was a traceback)
75. quantize --out / eval --save-config on a symlink loop: one line (was a RuntimeError traceback)
76. eval: a task.json giving a key twice (an answer scored twice, the last kept silently)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress.manifest import is_complete
from test_matrix import fails, gguf, nothing_complete, temporaries, tiny  # noqa: F401 - fixtures


def snapshot(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (and the links among them): equal snapshots = untouched."""
    out = {}
    for root in paths:
        items = [root] if root.is_file() else sorted(root.rglob("*"))
        for p in items:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    assert out, f"nothing to snapshot under {paths}"
    return out


@pytest.fixture
def art(gguf, tmp_path) -> Path:
    """A private copy of a finished GGUF export (the fixture's own stays pristine)."""
    a = tmp_path / "art"
    shutil.copytree(gguf, a)
    return a


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory) -> Path:
    from compress.quantize import QuantConfig, run_quantize

    return run_quantize(str(tiny), QuantConfig(scheme="int8", group_size=32, eval_tokens=0),
                        tmp_path_factory.mktemp("rel") / "q8")


@pytest.fixture
def qart(quantized, tmp_path) -> Path:
    """A private copy of a finished quantize artifact (what the demo exports)."""
    a = tmp_path / "qart"
    shutil.copytree(quantized, a)
    return a


@pytest.fixture
def model(tiny, tmp_path) -> Path:
    m = tmp_path / "fp32"
    shutil.copytree(tiny, m)
    return m


# ---- outputs never overlap inputs ----------------------------------------------------------------------

def test_35_export_out_is_the_input_artifact(qart, run_cli):
    before = snapshot(qart)
    fails(run_cli("export", qart, "--format", "gguf", "--qtype", "Q8_0", "--out", qart, "--force"),
          "the output is the input", "choose another --out")
    assert snapshot(qart) == before and is_complete(qart)


def test_36_quantize_out_is_the_input_folder(model, run_cli):
    before = snapshot(model)
    fails(run_cli("quantize", model, "--scheme", "int8", "--out", model, "--force"), "the output is the input")
    assert snapshot(model) == before and not (model / "manifest.json").exists()


def test_37_bench_out_is_the_measured_artifact(art, tiny, run_cli):
    before = snapshot(art)
    fails(run_cli("bench", art, "--reference", tiny, "--out", art, "--force"), "the output is the input")
    assert snapshot(art) == before


def test_38_export_out_is_the_parent_of_the_input(tiny, tmp_path, run_cli):
    par = tmp_path / "par"
    shutil.copytree(tiny, par / "inner")
    (par / "notes.txt").write_text("unrelated")
    before = snapshot(par)
    fails(run_cli("export", par / "inner", "--format", "gguf", "--qtype", "F32", "--out", par, "--force"),
          "the output contains the input")
    assert snapshot(par) == before


def test_39_export_out_inside_the_input(qart, run_cli):
    before = snapshot(qart)
    fails(run_cli("export", qart, "--format", "onnx", "--qtype", "int8", "--out", qart / "again", "--force"),
          "the output lies inside the input")
    assert snapshot(qart) == before and not (qart / "again").exists()


def test_40_force_never_replaces_a_folder_we_did_not_make(tiny, tmp_path, run_cli):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    fails(run_cli("export", tiny, "--format", "gguf", "--qtype", "F32", "--out", mine, "--force"),
          "not a compress artifact", "left untouched")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    nothing_complete(mine)


def test_41_force_through_a_symlink_replaces_the_target_and_leaves_no_stray_link(art, tiny, tmp_path, run_cli):
    link = tmp_path / "link"
    link.symlink_to(art, target_is_directory=True)
    rc, _, err = run_cli("export", tiny, "--format", "gguf", "--qtype", "Q8_0", "--check-tokens", "32",
                         "--out", link, "--force")
    assert rc == 0, err
    assert link.is_symlink() and is_complete(link) and (art / "model.Q8_0.gguf").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no .link.old-*, no temp


def test_42_quantize_out_is_the_bundled_models_cache(tmp_path, run_cli, monkeypatch):
    from compress.fetch import cached_folder

    out = cached_folder("smollm2-135m")
    fails(run_cli("quantize", "smollm2-135m", "--scheme", "int8", "--out", out, "--force"),
          "the output is the input smollm2-135m")
    assert not out.exists()


# ---- numbers are finite ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["inf", "nan", "-inf"])
def test_43_distill_non_finite_lr_refused(lr, tiny, tmp_path, run_cli):
    out = tmp_path / "kd-out"
    fails(run_cli("distill", "--teacher", tiny, "--student", tiny, "--lr", lr, "--out", out),
          f"--lr: {float(lr)} is not a finite number")
    nothing_complete(out)
    assert not (tmp_path / "kd-out.checkpoints").exists()


# 3e37: one finite Adam step leaves weights near 3e38, whose logits overflow; 1e39: the update itself
# does not fit float32 (torch raised a RuntimeError traceback)
@pytest.mark.parametrize("lr, says", [("3e37", "logits are not finite"), ("1e39", "the update overflows float32")],
                         ids=["logits-overflow", "update-overflows"])
def test_44_distill_weights_overflow_stops_before_saving(lr, says, tiny, student_copy, tmp_path, run_cli):
    out = tmp_path / "kd-out"
    before = snapshot(student_copy)
    fails(run_cli("distill", "--teacher", tiny, "--student", student_copy, "--lr", lr, "--steps", "1",
                  "--warmup", "0", "--seq-len", "32", "--batch", "2", "--checkpoint-every", "1",
                  "--eval-every", "1", "--eval-tokens", "64", "--threads", "1", "--out", out), says)
    nothing_complete(out)
    ck = tmp_path / "kd-out.checkpoints"
    assert not list(ck.glob("step-*")), "a checkpoint of non-finite weights was written"
    assert snapshot(student_copy) == before


@pytest.fixture
def student_copy(tiny, tmp_path) -> Path:
    from compress.prune import PruneConfig, prune

    return prune(str(tiny), PruneConfig(method="depth", layers=1, samples=4, seq_len=64, eval_tokens=0),
                 tmp_path / "student")


def test_45_eval_nan_weights_refused(model, run_cli):
    from safetensors.torch import load_file, save_file

    t = load_file(str(model / "model.safetensors"))
    t["model.norm.weight"][0] = float("nan")
    save_file(t, str(model / "model.safetensors"), metadata={"format": "pt"})
    rc, out, err = run_cli("eval", model, "--tasks", "", "--max-tokens", "64", "--window", "32", "--stride", "32")
    fails((rc, out, err), "non-finite weights in 1 tensor(s)", "model.norm.weight (1 NaN, 0 inf)")
    assert "nan" not in out


@pytest.fixture
def bench_run(art, tiny, tmp_path) -> Path:
    from compress.harness import BenchConfig, bench

    return bench(BenchConfig(latency=False, max_tokens=64, window=32, tasks=(), reference=str(tiny)),
                 [str(art)], tmp_path / "run")


def test_46_check_nan_tolerance_refused(bench_run, tmp_path, run_cli):
    base = tmp_path / "base.json"
    assert run_cli("check", bench_run, "--baseline", base, "--update-baseline")[0] == 0
    fails(run_cli("check", bench_run, "--baseline", base, "--tolerance", "ppl=nan"),
          "--tolerance: ppl=nan is not a finite number")


def test_47_check_nan_baseline_refused(bench_run, tmp_path, run_cli):
    base = tmp_path / "base.json"
    assert run_cli("check", bench_run, "--baseline", base, "--update-baseline")[0] == 0
    data = json.loads(base.read_text())
    for row in data["rows"]:
        row["perplexity"] = float("nan")
    base.write_text(json.dumps(data))  # json writes the bare NaN literal Python reads back
    fails(run_cli("check", bench_run, "--baseline", base), "malformed baseline", "perplexity is nan",
          "not a finite number")


def test_48_chat_profile_nan_budget_refused(gguf, tmp_path, run_cli):
    prof = tmp_path / "watch.yaml"
    prof.write_text("name: watch\nthreads: 1\nmemory_budget_mb: .nan\n")
    fails(run_cli("chat", gguf, "--profile", prof, "--once", "hi"), "watch.yaml", "memory_budget_mb",
          "finite number", "nan")


def test_49_quantize_config_with_inf_field_refused(model, tmp_path, run_cli):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(yaml.safe_dump({"scheme": "int4-gptq", "group_size": 32}) + "damp: .inf\n")
    out = tmp_path / "q"
    fails(run_cli("quantize", model, "--config", cfg, "--out", out), "q.yaml.damp: inf is not a finite number")
    nothing_complete(out)


# ---- temporaries -------------------------------------------------------------------------------------------

def test_50_long_legal_out_name_works(model, tmp_path, run_cli):
    out = tmp_path / ("q" * 240)
    rc, _, err = run_cli("quantize", model, "--scheme", "int8", "--eval-tokens", "0", "--out", out)
    assert rc == 0, err
    assert is_complete(out) and temporaries(out) == []


def test_51_dead_temporaries_in_the_parent_are_swept(tiny, tmp_path, run_cli):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".other.tmp-{dead}-0123abcd"  # another output's temp, its process gone (kill -9)
    stale.mkdir()
    (stale / "model.gguf").write_bytes(b"\0" * 1000)
    live = tmp_path / f".other.tmp-{os.getpid()}-0123abcd"  # a running process's temp: never touched
    live.mkdir()
    own = tmp_path / ".config.tmp-notes"  # the user's own hidden file with a similar name
    own.write_text("mine")
    out = tmp_path / "g"
    rc, _, err = run_cli("export", tiny, "--format", "gguf", "--qtype", "F32", "--check-tokens", "32", "--out", out)
    assert rc == 0, err
    assert not stale.exists() and live.is_dir() and own.read_text() == "mine"


# ---- threads are clamped to the cores ----------------------------------------------------------------------

def _clamp_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "threads asked for" in r.getMessage()]


@pytest.fixture(autouse=True)
def _fresh_clamp_notes(monkeypatch):
    """The clamp is said once per process; every in-process CLI run here is a process of its own."""
    monkeypatch.setattr("runtimes.base._SAID", set())


def test_52_chat_threads_clamped_and_said_once(gguf, run_cli, caplog):
    rc, out, err = run_cli("chat", gguf, "--threads", "100000", "--once", "hi", "--max-new-tokens", "4")
    assert rc == 0, err
    cores = os.cpu_count()
    assert _clamp_lines(caplog) == [f"100000 threads asked for; this machine has {cores} cores, using {cores}"]


def test_53_eval_threads_clamped_and_said_once(tiny, run_cli, caplog):
    rc, out, err = run_cli("eval", tiny, "--threads", "100000", "--tasks", "", "--max-tokens", "64", "--window", "32",
                           "--stride", "32", "--json")
    assert rc == 0, err
    assert json.loads(out)["result"]["perplexity"] > 1
    assert len(_clamp_lines(caplog)) == 1


# ---- input files validated where they are read -------------------------------------------------------------

@pytest.mark.parametrize("field, value, says", [
    ("files", "model.gguf", "'files' must be an object of file name -> size in bytes"),
    ("report", [1, 2], "'report' must be an object"),
    ("files", {"../../etc/passwd": 10}, "is not a path inside the artifact"),
], ids=["files-string", "report-list", "files-escaping"])
@pytest.mark.parametrize("command", ["info", "chat"])
def test_54_manifest_of_wrong_types(command, field, value, says, art, run_cli):
    m = json.loads((art / "manifest.json").read_text())
    m[field] = value
    (art / "manifest.json").write_text(json.dumps(m))
    args = ["info", art] if command == "info" else ["chat", art, "--once", "hi"]
    fails(run_cli(*args), "manifest.json: corrupt manifest", says)


def test_55_manifest_with_a_key_twice(art, run_cli):
    text = (art / "manifest.json").read_text()
    (art / "manifest.json").write_text(text.replace('"stage":', '"stage": "quantize", "stage":', 1))
    fails(run_cli("info", art), "corrupt manifest", "key 'stage' given twice")


def test_56_run_recipe_with_a_section_twice(tiny, tmp_path, run_cli):
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {tiny}\nwork_dir: {tmp_path / 'work'}\nquantize:\n  - {{name: a, scheme: int8}}\n"
                 "quantize:\n  - {name: b, scheme: int8}\n")
    fails(run_cli("run", p, "--dry-run"), "r.yaml: key 'quantize' given twice (line 5)")
    assert not (tmp_path / "work").exists()


def test_57_config_file_with_a_key_twice(model, tmp_path, run_cli):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("scheme: int8\ngroup_size: 32\ngroup_size: 64\n")
    out = tmp_path / "q"
    fails(run_cli("quantize", model, "--config", cfg, "--out", out), "q.yaml: key 'group_size' given twice (line 3)")
    nothing_complete(out)


def test_58_gguf_metadata_not_utf8_refused_with_the_key(art, run_cli):
    import struct

    f = next(art.glob("*.gguf"))
    data = f.read_bytes()
    value = b"general.name" + struct.pack("<IQ", 8, 4) + b"tiny"
    assert data.count(value) == 1
    f.write_bytes(data.replace(value, value[:-4] + b"ti\xffy"))  # same size: the manifest's check passes
    fails(run_cli("chat", art, "--once", "hi"), "metadata 'general.name' is not UTF-8", "chat template")
    fails(run_cli("chat", f, "--once", "hi"), "metadata 'general.name' is not UTF-8")


def test_59_chat_once_with_invalid_utf8_is_replaced_and_said(gguf, run_cli, caplog):
    once = os.fsdecode(b"caf\xe9 \xff\xfe?")  # what Python makes of those bytes in argv: lone surrogates
    rc, out, err = run_cli("chat", gguf, "--once", once, "--max-new-tokens", "4")
    assert rc == 0 and "Traceback" not in err, err
    said = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert said == ["the message was not valid UTF-8: 3 byte(s) replaced with U+FFFD"]


# ---- one-line errors naming the option, file or field, and the value -----------------------------------------

def test_60_usage_error_is_one_line(model, tmp_path, run_cli):
    out = tmp_path / "q"
    fails(run_cli("quantize", model, "--scheme", "int4-rtn", "--group-size", "32.5", "--out", out),
          "--group-size: '32.5' is not valid", "integer")
    fails(run_cli("quantize", model, "--grup-size", "32", "--out", out), "No such option: --grup-size")
    nothing_complete(out)


def test_61_prune_target_blames_the_value(model, tmp_path, run_cli):
    out = tmp_path / "p"
    fails(run_cli("prune", model, "--method", "width", "--target", "ffn=abc", "--out", out),
          "--target: ffn='abc': the value must be a whole number")
    nothing_complete(out)


def test_62_recipe_name_that_yaml_reads_as_a_number(tiny, tmp_path, run_cli):
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {tiny}\nwork_dir: {tmp_path / 'work'}\nquantize:\n  - {{name: 8, scheme: int8}}\n")
    fails(run_cli("run", r, "--dry-run"), "quantize[0].name: 8 is YAML's int, not a string", 'quote it (name: "8")')


def test_63_directory_where_a_file_is_expected(model, bench_run, tmp_path, run_cli):
    d = tmp_path / "adir"
    d.mkdir()
    fails(run_cli("check", bench_run, "--baseline", d), "adir: is a directory, expected a baseline file")
    fails(run_cli("quantize", model, "--config", d, "--out", tmp_path / "q"), "adir: is a directory, expected a config")


def test_64_compress_cache_pointing_at_a_file(tmp_path, run_cli, monkeypatch):
    f = tmp_path / "cachefile"
    f.write_text("x")
    monkeypatch.setenv("COMPRESS_CACHE", str(f))
    fails(run_cli("models"), f"COMPRESS_CACHE={f}: is a file, not a directory")


def test_65_eval_of_a_gguf_export_folder_evaluates_its_gguf(gguf, run_cli):
    rc, out, err = run_cli("eval", gguf, "--tasks", "", "--max-tokens", "64", "--window", "32", "--stride", "32",
                           "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["model_id"].startswith("gguf:") and r["result"]["perplexity"] > 1


def test_66_config_with_zero_layers_names_file_and_field(model, tmp_path, run_cli):
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = 0
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "q"
    fails(run_cli("quantize", model, "--scheme", "int8", "--out", out), "config.json: num_hidden_layers is 0")
    nothing_complete(out)


def test_67_truncated_tokenizer_json_names_the_file(model, run_cli):
    tj = model / "tokenizer.json"
    tj.write_bytes(tj.read_bytes()[:500])
    fails(run_cli("eval", model, "--tasks", "", "--max-tokens", "64", "--window", "32", "--stride", "32"),
          "tokenizer.json: ", "corrupt")


# ---- small outputs (saved configs, baselines) never overwrite an input ---------------------------------------

def test_68_save_config_over_an_input_file_refused(model, bench_run, tmp_path, run_cli):
    before = snapshot(model, bench_run)
    fails(run_cli("quantize", model, "--scheme", "int8", "--save-config", model / "config.json", "--dry-run"),
          "config.json: the --save-config file lies inside the input", "choose another --save-config")
    fails(run_cli("eval", model, "--tasks", "", "--save-config", model / "config.json"),
          "the --save-config file lies inside the input")
    fails(run_cli("check", bench_run, "--baseline", bench_run / "rows.jsonl", "--update-baseline"),
          "rows.jsonl: the --baseline file lies inside the input", "choose another --baseline")
    assert snapshot(model, bench_run) == before


def test_69_force_keeps_an_artifact_holding_files_we_did_not_write(qart, tiny, run_cli):
    (qart / "my-notes.txt").write_text("results of a week")
    before = snapshot(qart)
    fails(run_cli("export", tiny, "--format", "gguf", "--qtype", "F32", "--out", qart, "--force"),
          "holds files compress did not write (my-notes.txt)", "left untouched")
    assert snapshot(qart) == before


def test_70_run_stage_output_is_the_recipe_model(student_copy, tmp_path, run_cli):
    work = tmp_path / "work"
    model = work / "prune-p"  # the recipe's model is a prune artifact sitting where its prune stage writes
    work.mkdir()
    student_copy.rename(model)
    before = snapshot(model)
    r = recipe_file(tmp_path, model, work, prune={"name": "p", "method": "depth", "layers": 1, "samples": 4,
                                                  "seq_len": 64, "eval_tokens": 0})
    fails(run_cli("run", r), "the output is the input")
    assert snapshot(model) == before


def recipe_file(tmp_path: Path, model: Path, work: Path, **sections) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"model": str(model), "work_dir": str(work), **sections}))
    return p


def test_71_out_name_not_utf8_refused_before_any_work(tiny, tmp_path, run_cli):
    out = tmp_path / os.fsdecode(b"caf\xe9")
    fails(run_cli("export", tiny, "--format", "gguf", "--qtype", "F32", "--out", out),
          "caf\\xe9: the output path is not valid UTF-8")
    # (only the test's own model cache, where content digests are kept, may appear: no output, no temp)
    assert [p for p in os.listdir(tmp_path) if p != "cache"] == []


@pytest.mark.parametrize("where", ["input", "output"])
def test_72_distill_checkpoint_dir_on_an_input_or_the_output(where, tiny, student_copy, tmp_path, run_cli):
    out = tmp_path / "kd-out"
    ck = student_copy if where == "input" else out
    before = snapshot(student_copy)
    fails(run_cli("distill", "--teacher", tiny, "--student", student_copy, "--steps", "2", "--seq-len", "32",
                  "--batch", "2", "--eval-tokens", "0", "--checkpoint-dir", ck, "--out", out, "--force"),
          f"the checkpoint directory is the {where}", "choose another --checkpoint-dir")
    assert snapshot(student_copy) == before and not out.exists()


def test_73_recipe_with_a_non_finite_field(tiny, tmp_path, run_cli):
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {tiny}\nwork_dir: {tmp_path / 'work'}\n"
                 "quantize:\n  - {name: q, scheme: int4-gptq, group_size: 32, damp: .nan}\n")
    fails(run_cli("run", r, "--dry-run"), "r.yaml: quantize[0] (q).damp: nan is not a finite number")
    assert not (tmp_path / "work").exists()


def test_74_chat_repl_stdin_with_invalid_utf8(gguf, tmp_path):
    from test_matrix import subprocess_env

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "chat", str(gguf), "--max-new-tokens", "4"],
                          input=b"caf\xe9 \xff\xfe?\n/exit\n", capture_output=True, env=subprocess_env(tmp_path),
                          timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "the message was not valid UTF-8: 3 byte(s) replaced with U+FFFD" in " ".join(err.split())  # rich wraps


def test_75_out_is_a_symlink_loop(model, tmp_path, run_cli):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    fails(run_cli("quantize", model, "--scheme", "int8", "--eval-tokens", "0", "--out", tmp_path / "loop1"),
          "loop1: cannot tell where it points (a symlink loop?)")
    fails(run_cli("eval", model, "--tasks", "", "--save-config", tmp_path / "loop1"), "a symlink loop")


def test_76_task_json_with_a_key_twice(tiny, tmp_path, run_cli):
    task = tmp_path / "task.json"
    task.write_text('{"examples": [{"input": "2+2?", "target_scores": {"4": 1, "5": 0, "4": 0}}]}')
    fails(run_cli("eval", tiny, "--tasks", task, "--max-tokens", "64", "--window", "32", "--stride", "32"),
          "task.json: not valid JSON (key '4' given twice)")
