"""The CLI: bad input is one line on stderr, exit code 2 and nothing written; good input round-trips."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from compress.evaluate import EvalConfig
from compress.manifest import ArtifactWriter, read_manifest

# Fast options for evaluating the tiny model.
QUICK = ("--max-tokens", "600", "--tasks", "")


def _snapshot(root):
    """Every path under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _copy_tiny(src, dst):
    shutil.copytree(src, dst)
    return dst


# Each case builds its bad input under tmp and returns (CLI args, strings the error line must contain).

def _missing_path(tmp, tiny):
    p = tmp / "no-such-model"
    return ["eval", p], [str(p), "does not exist"]


def _folder_without_config(tmp, tiny):
    d = tmp / "folder"
    d.mkdir()
    (d / "notes.txt").write_text("not a model")
    return ["eval", d], [str(d), "config.json"]


def _truncated_safetensors(tmp, tiny):
    d = _copy_tiny(tiny, tmp / "trunc")
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)
    return ["eval", d], [str(f), "truncated safetensors"]


def _truncated_gguf(tmp, tiny):
    import gguf

    f = tmp / "tiny.gguf"
    w = gguf.GGUFWriter(str(f), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.add_tensor("output.weight", np.ones((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    full = f.stat().st_size
    assert full > 2 * 64 * 32 * 4
    os.truncate(f, full - 64 * 32 * 4 - 10)  # the second tensor's data is cut
    return ["eval", f], [str(f), "GGUF"]


def _bert(tmp, tiny):
    from transformers import BertConfig, BertForMaskedLM

    d = tmp / "bert"
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=64)).save_pretrained(d)
    return ["eval", d], [str(d / "config.json"), "BertForMaskedLM", "not a causal language model"]


def _pickle_only(tmp, tiny):
    d = _pickle_folder(tmp, tiny)
    return ["eval", d], [str(d), "pytorch_model.bin", "--allow-pickle"]


def _auto_map(tmp, tiny):
    d = _copy_tiny(tiny, tmp / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    return ["eval", d], [str(d / "config.json"), "auto_map", "--trust-remote-code"]


def _empty_text(tmp, tiny):
    f = tmp / "empty.txt"
    f.write_text("")
    return ["eval", tiny, "--data", f], [str(f), "empty"]


def _short_text(tmp, tiny):
    f = tmp / "short.txt"
    f.write_text("Call me Ishmael. Some years ago, never mind how long precisely.")
    return ["eval", tiny, "--data", f, "--tasks", ""], [str(f), "too short"]


def _task_without_mc(tmp, tiny):
    f = tmp / "task.json"
    f.write_text(json.dumps({"name": "free", "examples": [{"input": "Say hi", "target": "hi"}]}))
    return ["eval", tiny, "--tasks", f], [str(f), "no multiple-choice examples"]


def _unknown_bundled(tmp, tiny):
    return ["eval", "smollm-135m"], ["'smollm-135m'", "smollm2-135m", "gemma3-270m", "did you mean 'smollm2-135m'"]


def _unknown_config_key(tmp, tiny):
    f = tmp / "eval.yaml"
    f.write_text("window: 256\nstrde: 128\n")
    return ["eval", tiny, "--config", f], [str(f), "'strde'", "did you mean 'stride'"]


def _wrong_config_type(tmp, tiny):
    f = tmp / "eval.yaml"
    f.write_text("window: large\n")
    return ["eval", tiny, "--config", f], [str(f), "window", "expected an integer"]


def _info_without_manifest(tmp, tiny):
    d = _copy_tiny(tiny, tmp / "plain")
    return ["info", d], [str(d), "manifest.json"]


def _pickle_folder(tmp, tiny):
    import torch
    from transformers import AutoModelForCausalLM

    d = tmp / "pickled"
    d.mkdir()
    for f in tiny.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, d / f.name)
    torch.save(AutoModelForCausalLM.from_pretrained(tiny).state_dict(), d / "pytorch_model.bin")
    return d


BAD_INPUTS = {
    "missing-path": _missing_path,
    "folder-without-config": _folder_without_config,
    "truncated-safetensors": _truncated_safetensors,
    "truncated-gguf": _truncated_gguf,
    "bert-config": _bert,
    "pickle-only": _pickle_only,
    "auto-map-without-trust": _auto_map,
    "empty-text": _empty_text,
    "text-shorter-than-window": _short_text,
    "task-without-mc-examples": _task_without_mc,
    "unknown-bundled-name": _unknown_bundled,
    "unknown-config-key": _unknown_config_key,
    "wrong-config-type": _wrong_config_type,
    "info-without-manifest": _info_without_manifest,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(case, tmp_path, tiny_llama_dir, run_cli,
                                                                     capsys):
    args, expected = BAD_INPUTS[case](tmp_path, tiny_llama_dir)
    capsys.readouterr()  # drop what building the input printed (transformers' save/load bars)
    before = _snapshot(tmp_path)
    rc, out, err = run_cli(*args)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in err + out
    assert _snapshot(tmp_path) == before


def test_pickle_checkpoint_is_accepted_with_allow_pickle(tmp_path, tiny_llama_dir, run_cli):
    d = _pickle_folder(tmp_path, tiny_llama_dir)
    rc, out, err = run_cli("eval", d, *QUICK, "--allow-pickle", "--json")
    assert rc == 0, err
    pickled = json.loads(out)["result"]
    rc, out, err = run_cli("eval", tiny_llama_dir, *QUICK, "--json")
    assert rc == 0, err
    reference = json.loads(out)["result"]
    assert pickled["tokens"] == reference["tokens"] == 598  # 511 + 87 scored
    assert pickled["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-6)  # same weights


def test_auto_map_is_accepted_by_the_folder_check_with_trust_remote_code(tmp_path, tiny_llama_dir):
    from compress.checkpoints import inspect_hf_folder

    args, _ = _auto_map(tmp_path, tiny_llama_dir)
    info = inspect_hf_folder(args[1], trust_remote_code=True)
    assert info.config["auto_map"] and not info.pickle


def test_eval_json_output_parses(tiny_llama_dir, run_cli):
    rc, out, err = run_cli("eval", tiny_llama_dir, "--max-tokens", "600", "--window", "256", "--stride", "256",
                           "--tasks", "sports_understanding", "--mc-limit", "4", "--json")
    assert rc == 0, err
    p = json.loads(out)
    assert p["model"] == str(tiny_llama_dir)
    assert p["model_id"].startswith("dir:")
    assert p["config"] == EvalConfig(max_tokens=600, window=256, stride=256, tasks=("sports_understanding",),
                                     mc_limit=4).to_dict()
    r = p["result"]
    assert r["windows"] == 3 and r["tokens"] == 597 and r["bos"] is False  # 3 windows, first tokens unscored
    assert r["perplexity"] > 1
    assert r["mc"]["sports_understanding"]["n"] == 4
    assert r["kl"] is None


def test_eval_with_reference_reports_zero_kl_for_the_same_model(tiny_llama_dir, run_cli):
    rc, out, err = run_cli("eval", tiny_llama_dir, "--reference", tiny_llama_dir, *QUICK, "--json")
    assert rc == 0, err
    r = json.loads(out)["result"]
    assert r["kl"] == pytest.approx(0.0, abs=1e-7) and r["top1_agreement"] == 1.0


def test_eval_prints_a_table(tiny_llama_dir, run_cli):
    rc, out, err = run_cli("eval", tiny_llama_dir, *QUICK)
    assert rc == 0, err
    assert "perplexity" in out and "598 tokens" in out


def test_save_config_is_read_back_by_config_to_the_same_config(tmp_path, tiny_llama_dir, run_cli):
    saved = tmp_path / "eval.yaml"
    rc, out, err = run_cli("eval", tiny_llama_dir, "--max-tokens", "700", "--window", "300", "--stride", "200",
                           "--tasks", "anachronisms,emoji_movie", "--mc-limit", "2", "--threads", "1",
                           "--save-config", saved, "--json")
    assert rc == 0, err
    first = json.loads(out)
    want = EvalConfig(max_tokens=700, window=300, stride=200, tasks=("anachronisms", "emoji_movie"), mc_limit=2,
                      threads=1)
    assert first["config"] == want.to_dict()
    assert yaml.safe_load(saved.read_text())["type"] == "eval"

    rc, out, err = run_cli("eval", tiny_llama_dir, "--config", saved, "--json")
    assert rc == 0, err
    second = json.loads(out)
    assert second["config"] == first["config"]
    assert second["result"]["perplexity"] == pytest.approx(first["result"]["perplexity"], rel=1e-6)
    assert second["result"]["mc"] == first["result"]["mc"]


def test_command_line_options_override_the_config_file(tmp_path, tiny_llama_dir, run_cli):
    f = tmp_path / "eval.yaml"
    f.write_text("max_tokens: 900\nwindow: 256\nstride: 256\ntasks: []\n")
    rc, out, err = run_cli("eval", tiny_llama_dir, "--config", f, "--max-tokens", "600", "--json")
    assert rc == 0, err
    assert json.loads(out)["config"] == EvalConfig(max_tokens=600, window=256, stride=256, tasks=()).to_dict()


def _artifact(tmp_path):
    out = tmp_path / "art"
    with ArtifactWriter(out, stage="eval", config=EvalConfig(window=256, stride=256), input_id="dir:abc") as art:
        (art.path / "result.json").write_text("{}")
        art.report["perplexity"] = 42.5
    return out


def test_info_prints_a_real_artifact(tmp_path, run_cli):
    art = _artifact(tmp_path)
    m = read_manifest(art)
    rc, out, err = run_cli("info", art)
    assert rc == 0, err
    for text in ("eval", m.content_id, "dir:abc", "report.perplexity", "42.5", "1 files"):
        assert text in out


def test_info_json_is_the_manifest(tmp_path, run_cli):
    art = _artifact(tmp_path)
    rc, out, err = run_cli("info", art, "--json")
    assert rc == 0, err
    assert json.loads(out) == json.loads((art / "manifest.json").read_text())


def test_info_on_a_truncated_artifact_exits_2(tmp_path, run_cli):
    art = _artifact(tmp_path)
    (art / "result.json").write_text("{")
    rc, out, err = run_cli("info", art)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "result.json" in err and "corrupt artifact" in err


def test_a_file_system_error_is_one_line_naming_the_path(tmp_path, run_cli, monkeypatch):
    """Disk full (or permission denied) inside any command: the OS's words and the path, exit 2, no traceback."""
    import errno

    import compress.fetch

    def full(cfg, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "a" / "manifest.json"))

    monkeypatch.setattr(compress.fetch, "fetch", full)
    rc, _, err = run_cli("fetch", "smollm2-135m", "--force")
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "manifest.json" in lines[0], err
