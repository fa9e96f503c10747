"""``compress export --format gguf`` and every bad input: one line, exit 2, nothing left that looks finished."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
from test_export_gguf_helpers import rtn_artifact

from compress.manifest import read_manifest
from export.gguf import GGUFConfig, export_gguf


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _leftovers(parent, name):
    return sorted(p.name for p in parent.glob(f".{name}.tmp-*"))


def test_cli_exports_a_validated_gguf(run_cli, tiny_llama_dir, tmp_path):
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--qtype", "Q8_0", "--out", tmp_path / "q8",
                           "--check-tokens", "48", "--save-config", tmp_path / "cfg.yaml")
    assert rc == 0, err
    assert (tmp_path / "q8" / "model.Q8_0.gguf").is_file()
    m = read_manifest(tmp_path / "q8")
    assert m.stage == "export-gguf" and m.config["qtype"] == "Q8_0" and m.config["check_tokens"] == 48
    assert "top-1" in out and "llama.cpp vs PyTorch" in out
    # the saved config is the recipe: running it gives the same content id
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--config", tmp_path / "cfg.yaml",
                           "--out", tmp_path / "again")
    assert rc == 0, err
    assert read_manifest(tmp_path / "again").content_id == m.content_id


def test_dry_run_prints_the_plan_and_writes_nothing(run_cli, tiny_gemma3_dir, tmp_path):
    rc, out, err = run_cli("export", tiny_gemma3_dir, "--format", "gguf", "--qtype", "Q4_0", "--out",
                           tmp_path / "x", "--dry-run")
    assert rc == 0, err
    assert "plan: gemma3, 2 layers" in out and '"Q4_0": 14' in out
    assert not (tmp_path / "x").exists()


def test_unsupported_architecture_lists_the_supported_ones(run_cli, tiny_llama_dir, tmp_path):
    src = tmp_path / "gpt2"
    shutil.copytree(tiny_llama_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (src / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run_cli("export", src, "--format", "gguf", "--qtype", "F16", "--out", tmp_path / "o")
    assert rc == 2
    line = _one_error_line(err)
    assert "GPT2LMHeadModel" in line and "llama (LlamaForCausalLM)" in line and "gemma3 (Gemma3ForCausalLM)" in line
    assert not (tmp_path / "o").exists()


def test_non_empty_output_directory_is_refused_unless_forced(run_cli, tiny_llama_dir, tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--out", out_dir)
    assert rc == 2
    assert "not empty" in _one_error_line(err) and "--force" in err
    assert (out_dir / "notes.txt").read_text() == "mine"
    # --force only replaces what compress wrote (issue 17): a folder of the user's stays as it is
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--out", out_dir, "--force",
                           "--check-tokens", "32")
    assert rc == 2 and "not a compress artifact" in _one_error_line(err)
    assert (out_dir / "notes.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    for qtype in ("F32", "F16"):
        rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--qtype", qtype, "--out", ours,
                               "--force", "--check-tokens", "32")
        assert rc == 0, err
    assert not (ours / "model.F32.gguf").exists() and (ours / "model.F16.gguf").is_file()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_mid_write_leaves_nothing_under_the_final_name(exc, tiny_llama_dir, tmp_path, monkeypatch):
    import export.gguf.plan as plan

    real, calls = plan.TensorPlan.produce, []

    def flaky(self, src):
        calls.append(self.gguf_name)
        if len(calls) == 5:
            raise exc
        return real(self, src)

    monkeypatch.setattr(plan.TensorPlan, "produce", flaky)
    with pytest.raises(type(exc)):
        export_gguf(tiny_llama_dir, GGUFConfig(qtype="Q4_0"), tmp_path / "o")
    assert len(calls) == 5  # it really failed half way
    assert not (tmp_path / "o").exists()
    assert _leftovers(tmp_path, "o") == []


def test_disk_full_is_one_line_and_leaves_nothing(run_cli, tiny_llama_dir, tmp_path, monkeypatch):
    import export.gguf.writer as writer

    def full(self, tensor, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.GGUFWriter, "write_tensor_data", full)
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--out", tmp_path / "o")
    assert rc == 2
    assert "No space left on device" in _one_error_line(err)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path, "o") == []


def test_corrupt_artifacts_are_refused(run_cli, tiny_llama_dir, tmp_path):
    # a plain folder whose weights were truncated
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_llama_dir, trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    rc, out, err = run_cli("export", trunc, "--format", "gguf", "--out", tmp_path / "o1")
    assert rc == 2 and "truncated" in _one_error_line(err)
    # garbage config.json
    bad = tmp_path / "badcfg"
    shutil.copytree(tiny_llama_dir, bad)
    (bad / "config.json").write_text("{not json")
    rc, out, err = run_cli("export", bad, "--format", "gguf", "--out", tmp_path / "o2")
    assert rc == 2 and "config.json" in _one_error_line(err)
    # a quantized artifact whose weights no longer match its manifest
    art = rtn_artifact(tiny_llama_dir, tmp_path / "art")
    w = art / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    rc, out, err = run_cli("export", art, "--format", "gguf", "--out", tmp_path / "o3")
    assert rc == 2 and "corrupt artifact" in _one_error_line(err) and "model.safetensors" in err
    for name in ("o1", "o2", "o3"):
        assert not (tmp_path / name).exists()


def test_unknown_qtype_lists_the_types(run_cli, tiny_llama_dir, tmp_path):
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "gguf", "--qtype", "Q4_K", "--out", tmp_path / "o")
    assert rc == 2
    line = _one_error_line(err)
    assert "did you mean 'Q4_K_M'" in line
    for q in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K"):
        assert q in line
    assert not (tmp_path / "o").exists()


def test_unknown_format_lists_the_formats(run_cli, tiny_llama_dir, tmp_path):
    rc, out, err = run_cli("export", tiny_llama_dir, "--format", "guff", "--out", tmp_path / "o")
    assert rc == 2 and "did you mean 'gguf'" in _one_error_line(err)


def test_a_gguf_file_as_its_own_type_is_refused(run_cli, tiny_llama_dir, tmp_path, capsys):
    """A GGUF is an export input (tests/test_gguf_input.py), but not to be written again as its own type."""
    path = export_gguf(tiny_llama_dir, GGUFConfig(qtype="F16", check_tokens=16), tmp_path / "first")
    capsys.readouterr()  # transformers' loading bars from the export above
    rc, out, err = run_cli("export", path, "--format", "gguf", "--out", tmp_path / "o")
    assert rc == 2 and "already a F16 GGUF" in _one_error_line(err)
