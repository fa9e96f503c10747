"""Distillation on a tiny teacher/student pair: the KD loss falls, a killed run resumes with the
identical next batch and ends with the same weights, and bad input fails before any training."""

from __future__ import annotations

import pytest
import torch
from compress.tiny import build_model, build_tokenizer, save_tiny

from compress.distill import DistillConfig, TrainingDivergedError, default_checkpoint_dir, distill
from compress.distill.data import SampleOrder
from compress.distill.loss import kd_loss
from compress.errors import ArtifactError, DataError, ModelLoadError
from compress.manifest import read_manifest
from compress.models import load_model
from compress.prune import PruneConfig, prune

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 4-layer tiny teacher and its depth-pruned 3-layer student."""
    root = tmp_path_factory.mktemp("kd")
    model = build_model("llama", num_hidden_layers=4)
    with torch.no_grad():  # a random tiny model predicts almost uniformly; a sharper teacher has more to teach
        model.lm_head.weight.mul_(5)
    teacher = root / "teacher"
    model.save_pretrained(teacher)
    build_tokenizer(add_bos=False).save_pretrained(teacher)
    student = prune(str(teacher), PruneConfig(method="depth", layers=3, samples=8, seq_len=64, eval_tokens=0),
                    root / "student")
    return str(teacher), str(student)


def _cfg(pair, **kw):
    base = dict(teacher=pair[0], student=pair[1], steps=6, seq_len=32, batch=2, lr=3e-3, warmup=1,
                checkpoint_every=2, eval_every=3, eval_tokens=256)
    return DistillConfig(**{**base, **kw})


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_temperature():
    s = torch.randn(2, 5, 11)
    assert float(kd_loss(s, s.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 5, 11)
    p, q = torch.softmax(t, -1), torch.log_softmax(s, -1)
    want = float((p * (torch.log(p) - q)).sum(-1).mean())
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="logit shapes differ"):
        kd_loss(s, torch.randn(2, 5, 12), 1.0)


def test_kd_loss_decreases_over_a_few_steps(pair, tmp_path):
    from compress.data import load_text, tokenize_text

    out = distill(_cfg(pair, steps=20, checkpoint_every=20, eval_every=10, lr=1e-3), tmp_path / "kd")
    rep = read_manifest(out).report
    assert len(rep["loss"]) == 20 and sum(rep["loss"][-5:]) < sum(rep["loss"][:5])
    assert [e["step"] for e in rep["eval"]] == [0, 10, 20] and rep["perplexity_teacher"] is not None
    assert rep["tokens_seen"] == 20 * 2 * 32
    # on the same held batch, the trained student is closer to the teacher than the pruned one was
    teacher, before, after = (load_model(p) for p in (pair[0], pair[1], out))
    ids = torch.tensor(tokenize_text(teacher.tokenizer, load_text("moby-dick").text[:4000])[:256]).reshape(4, 64)
    with torch.no_grad():
        t = teacher.model(ids).logits
        kl_before, kl_after = (float(kd_loss(m.model(ids).logits, t, 2.0)) for m in (before, after))
    assert kl_after < 0.8 * kl_before
    assert after.model.config.num_hidden_layers == 3


def test_kill_and_resume_continue_with_the_identical_next_batch(pair, tmp_path):
    seen_a: dict[int, torch.Tensor] = {}
    ref = distill(_cfg(pair), tmp_path / "a", on_step=lambda s, ids, m: seen_a.setdefault(s, ids.clone()))

    seen_b: dict[int, torch.Tensor] = {}

    def killed_at_3(step, ids, model):
        if step == 3:  # steps 0-2 done, last checkpoint at step 2: step 2 is lost and redone
            raise KeyboardInterrupt
        seen_b[step] = ids.clone()

    with pytest.raises(KeyboardInterrupt):
        distill(_cfg(pair), tmp_path / "b", on_step=killed_at_3)
    assert not (tmp_path / "b").exists()
    assert (default_checkpoint_dir(tmp_path / "b") / "latest").read_text() == "step-000002"
    resumed: dict[int, torch.Tensor] = {}
    out = distill(_cfg(pair), tmp_path / "b", resume=True, on_step=lambda s, ids, m: resumed.setdefault(s, ids))
    assert min(resumed) == 2
    for step in range(2, 6):
        assert torch.equal(resumed[step], seen_a[step])
    assert read_manifest(out).report["resumed_at"] == [2]
    a, b = load_model(ref).model.state_dict(), load_model(out).model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_stop_after_minutes_leaves_a_checkpoint_to_resume(pair, tmp_path):
    assert distill(_cfg(pair), tmp_path / "c", stop_after_minutes=0.0) is None
    assert (default_checkpoint_dir(tmp_path / "c") / "latest").read_text() == "step-000001"
    with pytest.raises(ArtifactError, match="use --resume"):
        distill(_cfg(pair), tmp_path / "c")
    assert distill(_cfg(pair), tmp_path / "c", resume=True) == (tmp_path / "c").absolute()


def test_sample_order_is_a_pure_function_of_the_index():
    a, b = SampleOrder(7, seed=3), SampleOrder(7, seed=3)
    first = [a[k] for k in range(21)]
    assert sorted(first[:7]) == list(range(7)) and sorted(first[7:14]) == list(range(7))
    assert [b[k] for k in range(20, -1, -1)] == first[::-1]
    assert [SampleOrder(7, seed=4)[k] for k in range(7)] != first[:7]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(pair, tmp_path):
    def poison(step, ids, model):
        if step == 3:
            with torch.no_grad():
                model.model.norm.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="distill step 4: loss is nan"):
        distill(_cfg(pair), tmp_path / "n", on_step=poison)
    assert not (tmp_path / "n").exists()
    ck = default_checkpoint_dir(tmp_path / "n")
    assert (ck / "latest").read_text() == "step-000002"
    state = torch.load(ck / "step-000002" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_teacher_and_student_with_different_vocabularies_are_refused(pair, tmp_path, run_cli):
    from transformers import AutoTokenizer

    other = save_tiny(tmp_path / "other", "llama", num_hidden_layers=2, vocab_size=400)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<extra_token_a>", "<extra_token_b>"])
    tok.save_pretrained(str(other))
    with pytest.raises(ModelLoadError, match="different tokenizers \\(320 and 322 tokens\\)"):
        distill(_cfg(pair, student=str(other)), tmp_path / "v")
    same_tok = save_tiny(tmp_path / "wide", "llama", num_hidden_layers=2, vocab_size=400)
    rc, _, err = run_cli("distill", "--teacher", pair[0], "--student", same_tok, "--steps", "2", "--out", tmp_path / "w")
    assert rc == 2 and "vocab_size 320" in err and "has 400" in err
    assert not (tmp_path / "w").exists()


def test_too_little_text_and_unwritable_checkpoints_fail_before_training(pair, tmp_path, run_cli):
    short = tmp_path / "short.txt"
    short.write_text("Call me Ishmael. " * 40)
    with pytest.raises(DataError, match="too little training text for 50 steps"):
        distill(_cfg(pair, data=str(short), steps=50), tmp_path / "s")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, _, err = run_cli("distill", "--teacher", pair[0], "--student", pair[1], "--steps", "2", "--out",
                         tmp_path / "u", "--checkpoint-dir", blocker / "ckpt")
    assert rc == 2 and "checkpoint directory is not writable" in err and str(blocker / "ckpt") in err


def test_distill_cli_trains_resumes_and_the_student_quantizes_and_exports(pair, tmp_path, run_cli):
    args = ["distill", "--teacher", pair[0], "--student", pair[1], "--steps", "4", "--seq-len", "32", "--batch", "2",
            "--warmup", "1", "--checkpoint-every", "2", "--eval-every", "2", "--eval-tokens", "256", "--out",
            tmp_path / "kd"]
    rc, out, err = run_cli(*args, "--stop-after", "0")
    assert rc == 3 and "--resume" in out
    rc, out, err = run_cli(*args, "--resume")
    assert rc == 0, err
    assert "resumed at steps" in out and "perplexity" in out
    rc, out, err = run_cli("quantize", tmp_path / "kd", "--scheme", "int4-rtn", "--group-size", "32",
                           "--eval-tokens", "0", "--out", tmp_path / "q")
    assert rc == 0, err
    rc, out, err = run_cli("export", tmp_path / "kd", "--format", "gguf", "--qtype", "F32", "--out", tmp_path / "g")
    assert rc == 0, err


def test_hidden_state_loss_maps_the_layers_depth_pruning_kept(pair, tmp_path):
    from compress.errors import ConfigError

    kept = read_manifest(pair[1]).report["layers_kept"]
    out = distill(_cfg(pair, steps=2, hidden_weight=1.0), tmp_path / "h")
    assert read_manifest(out).report["layer_map"] == [[i, k] for i, k in enumerate(kept)]
    plain = save_tiny(tmp_path / "plain", "llama", num_hidden_layers=2)  # no manifest: nothing says which layers
    with pytest.raises(ConfigError, match="give layer_map pairs"):
        distill(_cfg(pair, student=str(plain), steps=2, hidden_weight=1.0), tmp_path / "h2")
    out = distill(_cfg(pair, student=str(plain), steps=2, hidden_weight=1.0, layer_map=((0, 1), (1, 3))),
                  tmp_path / "h3")
    assert read_manifest(out).report["layer_map"] == [[0, 1], [1, 3]]
