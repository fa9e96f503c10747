"""compress run: recipes parse into the stages' own configs, a finished recipe does no work, a changed
stage redoes only itself and what reads from it, and --dry-run validates without writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_export_onnx_helpers import peaked

from compress.errors import ConfigError, IncompatibleLayerError
from compress.manifest import read_manifest
from compress.pipeline import load_recipe
from compress.quantize import QuantConfig


def write_recipe(path: Path, model: Path | str, work: Path, **sections) -> Path:
    data = {"model": str(model), "work_dir": str(work), **sections}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def small(tmp_path: Path, **changes) -> Path:
    """quantize int8 -> GGUF Q8_0 (the integers reused) and an fp32 ONNX of the model."""
    sections = {
        "quantize": [{"name": "q8", "scheme": "int8", "group_size": 32, "eval_tokens": 0}],
        "export": [{"name": "gguf", "format": "gguf", "from": "q8", "qtype": "Q8_0", "check_tokens": 32},
                   {"name": "onnx", "format": "onnx", "from": "model", "precision": "fp32", "check_tokens": 32}],
    }
    sections.update(changes)
    return write_recipe(tmp_path / "r.yaml", peaked("llama"), tmp_path / "work", **sections)


def created(work: Path) -> dict[str, str]:
    return {d.name: read_manifest(d).created + read_manifest(d).content_id for d in sorted(work.iterdir())
            if (d / "manifest.json").is_file()}


def test_recipe_sections_become_the_stage_configs(tmp_path):
    r = load_recipe(small(tmp_path))
    q = r.step("quantize-q8")
    assert q.config == QuantConfig(scheme="int8", group_size=32, eval_tokens=0)
    assert [s.key for s in r.steps] == ["quantize-q8", "export-gguf", "export-onnx"]
    assert r.step("export-gguf").inputs == ("quantize-q8",) and r.step("export-onnx").inputs == ("model",)
    assert all(s.out.parent == r.work_dir for s in r.steps)


@pytest.mark.parametrize("change,message", [
    ({"quantise": []}, "unknown key 'quantise' (did you mean 'quantize'?)"),
    ({"quantize": [{"name": "q", "schme": "int8"}]}, "unknown key 'schme' (did you mean 'scheme'?)"),
    ({"quantize": [{"name": "q", "scheme": "int3"}]}, "'int3' is not one of"),
    ({"quantize": [{"scheme": "int8"}]}, "'name' is required"),
    ({"quantize": [{"name": "../escape", "scheme": "int8"}]}, "must be a plain folder name"),
    ({"quantize": [{"name": "/abs", "scheme": "int8"}]}, "must be a plain folder name"),
    ({"export": [{"name": "x", "format": "tflite"}]}, "'tflite' is not an export format"),
    ({"export": [{"name": "x", "format": "gguf", "from": "int7"}]}, "'int7' is not a quantize variant"),
    ({"export": [{"name": "x", "format": "gguf", "qtype": "Q3_K"}]}, "'Q3_K' is not a GGUF type"),
    ({"export": [{"name": "x", "format": "gguf"}, {"name": "x", "format": "onnx"}]}, "names must be unique"),
    ({"distill": {"steps": 10}}, "needs a prune section before it"),
    ({"check": {"baseline": "b.json"}}, "needs a bench section"),
])
def test_bad_recipes_are_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(small(tmp_path, **change))
    assert message in str(e.value)


def test_dry_run_checks_group_sizes_without_writing(tmp_path, run_cli):
    recipe = small(tmp_path, quantize=[{"name": "q4", "scheme": "int4-rtn", "group_size": 64, "eval_tokens": 0}],
                   export=[])
    rc, out, err = run_cli("run", recipe, "--dry-run")
    assert rc == 2
    assert "quantize q4: group size 64 does not divide" in err and "model.layers.[0-1].self_attn.q_proj (96)" in err
    assert not (tmp_path / "work").exists()
    with pytest.raises(IncompatibleLayerError):
        from compress.pipeline import dry_run

        dry_run(load_recipe(recipe), lambda s: None)


def test_dry_run_lists_every_stage_and_writes_nothing(tmp_path, run_cli):
    rc, out, err = run_cli("run", small(tmp_path), "--dry-run")
    assert rc == 0, err
    for key in ("quantize-q8", "export-gguf", "export-onnx"):
        assert key in out
    assert "recipe ok: 3 stages, 3 to run, 0 done" in out
    assert not (tmp_path / "work").exists()


def test_second_run_does_nothing_and_a_changed_stage_redoes_only_itself(tmp_path, run_cli):
    recipe = small(tmp_path)
    work = tmp_path / "work"
    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    assert out.count("ran in") == 3
    assert "try: compress chat" in out and "export-gguf" in out.split("try:")[1]
    first = created(work)
    assert set(first) == {"quantize-q8", "export-gguf", "export-onnx"}

    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    assert "nothing to do: all 3 stages were already done (cached)" in out
    assert "ran in" not in out and created(work) == first

    rc, out, err = run_cli("run", recipe, "--dry-run")
    assert "recipe ok: 3 stages, 0 to run, 3 done" in out

    # the quantize stage changes: it and the GGUF reading it run again, the ONNX of the model does not
    data = yaml.safe_load(recipe.read_text())
    # (per channel: a grid Q8_0 still holds exactly; an asymmetric int8 would now be refused by the export)
    data["quantize"][0]["group_size"] = 0
    recipe.write_text(yaml.safe_dump(data))
    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    again = created(work)
    assert again["export-onnx"] == first["export-onnx"]
    assert again["quantize-q8"] != first["quantize-q8"] and again["export-gguf"] != first["export-gguf"]
    assert json.loads((work / "quantize-q8" / "quantization.json").read_text())  # a readable artifact
    assert read_manifest(work / "quantize-q8").config["group_size"] == 0


def test_an_output_folder_that_is_not_this_stages_artifact_is_never_replaced(tmp_path, run_cli):
    recipe = small(tmp_path)
    mine = tmp_path / "work" / "export-onnx"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own files")
    rc, out, err = run_cli("run", recipe)
    assert rc == 2
    assert "export-onnx: output folder exists and is not an artifact" in err
    assert (mine / "notes.txt").read_text() == "my own files"
    assert not (tmp_path / "work" / "quantize-q8").exists()  # refused before any stage ran


def test_bench_report_and_check_stages_are_cached_too(tmp_path, run_cli):
    from compress.harness import write_baseline

    model = peaked("llama")
    bench = {"name": "laptop", "reference": str(model), "tasks": [], "max_tokens": 128, "window": 64,
             "latency": False}
    recipe = small(tmp_path, export=[{"name": "gguf", "format": "gguf", "from": "q8", "qtype": "Q8_0",
                                      "check_tokens": 32}], bench=[bench], report={})
    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    run_dir = tmp_path / "work" / "bench-laptop"
    assert (run_dir / "report" / "report.md").is_file()
    assert f"report: {run_dir / 'report' / 'report.md'}" in out
    baseline = write_baseline(run_dir, tmp_path / "baseline.json")

    data = yaml.safe_load(recipe.read_text())
    data["check"] = {"baseline": str(baseline)}
    recipe.write_text(yaml.safe_dump(data))
    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    assert out.count("ran in") == 1 and "check check" in out  # only the new stage ran
    assert read_manifest(tmp_path / "work" / "check").report["passed"] is True
    rc, out, err = run_cli("run", recipe)
    assert rc == 0 and "nothing to do: all 5 stages were already done (cached)" in out

    # a baseline the run falls behind: the check (only) runs again and the run exits 1
    base = json.loads(baseline.read_text())
    for row in base["rows"]:
        if row.get("perplexity"):
            row["perplexity"] = row["perplexity"] / 2
    baseline.write_text(json.dumps(base))
    rc, out, err = run_cli("run", recipe)
    assert rc == 1, err
    assert out.count("ran in") == 1 and "check failed: check" in out
    assert read_manifest(tmp_path / "work" / "check").report["passed"] is False


@pytest.mark.parametrize("name", ["default", "phone"])
def test_shipped_recipes_parse(name):
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml")
    assert r.model == "smollm2-135m"
    kinds = {s.kind for s in r.steps}
    assert {"quantize", "export-gguf", "export-onnx", "bench", "report"} <= kinds
    for s in r.steps:
        if s.kind == "quantize":
            assert s.config.effective_group_size in (0, 32, 64)  # 576 and 1536 wide layers: never 128


def test_a_real_run_checks_every_stage_before_running_any(tmp_path, run_cli):
    recipe = small(tmp_path, bench=[{"name": "b", "profile": "fone", "reference": str(peaked("llama"))}])
    rc, out, err = run_cli("run", recipe)
    assert rc == 2 and "unknown profile 'fone'" in err and "did you mean 'phone'" in err
    assert not (tmp_path / "work" / "quantize-q8").exists()  # refused before the first stage


def test_prune_and_distill_feed_the_rest_of_the_recipe(tmp_path, run_cli):
    recipe = small(tmp_path, prune={"method": "depth", "layers": 1, "samples": 4, "seq_len": 64, "eval_tokens": 0},
                   distill={"steps": 4, "seq_len": 32, "batch": 2, "warmup": 1, "checkpoint_every": 2,
                            "eval_every": 2, "eval_tokens": 64})
    r = load_recipe(recipe)
    assert [s.key for s in r.steps][:3] == ["prune", "distill", "quantize-q8"]
    assert r.step("distill").config.student == str(r.step("prune").out)
    assert r.step("quantize-q8").inputs == ("distill",) and r.step("export-onnx").inputs == ("distill",)
    rc, out, err = run_cli("run", recipe)
    assert rc == 0, err
    assert out.count("ran in") == 5
    work = tmp_path / "work"
    assert read_manifest(work / "quantize-q8").input_id == read_manifest(work / "distill").content_id
    assert json.loads((work / "export-onnx" / "config.json").read_text())["num_hidden_layers"] == 1
    rc, out, err = run_cli("run", recipe)
    assert "nothing to do: all 5 stages were already done (cached)" in out
