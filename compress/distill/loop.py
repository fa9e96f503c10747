"""``distill``: train a student on a teacher's softened logits, with atomic checkpoints and resume.

    path = distill(DistillConfig(teacher="smollm2-135m", student="out/smol-20l", steps=200), "out/smol-kd")

Written on ``accelerate``: the same code runs single-process here and multi-GPU / multi-node with
``accelerate launch --num_processes N -m compress.cli distill ...`` (each process takes its own
``batch`` sequences of every step; the data order stays a function of the step). Teacher logits are
computed on the fly: caching them costs batch x seq_len x vocab x 2 bytes per step on disk (100 MB
for SmolLM2 at 4 x 256), the report times the teacher's share of each step so the trade-off can be
judged from measurements. Bad input fails before any training: different vocabularies, too little
text, an unwritable checkpoint directory, an existing output directory.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from runtimes.base import usable_threads

from ..data import load_text, text_windows, tokenize_text, uses_bos
from ..errors import ArtifactError, CompressError, ConfigError
from ..manifest import ArtifactWriter, check_writable_target
from ..outputs import check_no_overlap
from .checkpoint import CheckpointDir, rng_state, set_rng_state
from .config import DistillConfig
from .data import OrderedSamples, SampleOrder, TokenSequences, check_enough
from .loss import ce_loss, hidden_loss, kd_loss
from .setup import TrainBar, check_same_vocab, lr_lambda, resolve_layer_map, source_folder

log = logging.getLogger(__name__)


class TrainingDivergedError(CompressError):
    """The loss (or the gradient) became NaN or infinite; the last good checkpoint is kept."""


def default_checkpoint_dir(out: Path) -> Path:
    """Checkpoints live beside the artifact: the artifact directory itself appears only when complete."""
    out = Path(out).absolute()
    return out.parent / f"{out.name}.checkpoints"


def _eval_windows(tokenizer, cfg: DistillConfig):
    if not cfg.eval_tokens:
        return []
    text = load_text(cfg.eval_data)
    ids = tokenize_text(tokenizer, text.text[:cfg.eval_tokens * 12], max_tokens=cfg.eval_tokens)
    bos = tokenizer.bos_token_id if uses_bos(tokenizer) else None
    window = min(512, len(ids) + (bos is not None))
    return text_windows(ids, window=window, stride=window, bos_id=bos, source=text.name)


class _OnDevice:
    """The Runtime protocol's ``logits`` for a model wherever accelerate put it (CPU or GPU)."""

    name = "pytorch"

    def __init__(self, model):
        self.model, self.device = model, next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, token_ids, last: int | None = None):
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        return self.model(ids, use_cache=False, logits_to_keep=last or 0).logits[0].float().cpu().numpy()


def _perplexity(model, windows) -> float | None:
    """Perplexity on the held-out windows with compress.evaluate's arithmetic (as ``compress eval``)."""
    from ..evaluate import score_windows

    if not windows:
        return None
    was_training = model.training
    model.eval()
    try:
        return round(score_windows(_OnDevice(model), windows)["perplexity"], 4)
    finally:
        model.train(was_training)


def distill(cfg: DistillConfig, out_dir: str | Path, *, resume: bool = False, force: bool = False,
            checkpoint_dir: str | Path | None = None, stop_after_minutes: float | None = None,
            threads: int | None = None, on_step: Callable[[int, torch.Tensor, Any], None] | None = None
            ) -> Path | None:
    """Distill ``cfg.teacher`` into ``cfg.student``; write the trained student to ``out_dir``.

    Returns the artifact path, or None when ``stop_after_minutes`` ran out first (a checkpoint was
    written; call again with ``resume=True``). ``on_step(step, batch_ids, student)`` is called before
    each step (tests use it to record batches or inject faults)."""
    from accelerate import Accelerator

    from ..models import load_model, load_tokenizer
    from ..prune.model_ops import copy_tokenizer_files, param_count

    cfg.require_student()
    out = Path(out_dir).absolute()
    ck = CheckpointDir(Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out))
    inputs = (cfg.teacher, cfg.student, cfg.data, cfg.eval_data)
    check_writable_target(out, force=force, inputs=inputs)
    # --force clears the checkpoint folder's step-* folders: it may not be, hold or sit in an input or the output
    check_no_overlap(ck.path, inputs, what="checkpoint directory", option="--checkpoint-dir")
    check_no_overlap(ck.path, [out], what="checkpoint directory", option="--checkpoint-dir", against="output")
    ck.check_writable()
    if ck.steps() and not resume:
        if not force:
            raise ArtifactError(f"{ck.path}: holds checkpoints of an earlier run (step {ck.steps()[-1]}); "
                                "use --resume to continue it or --force to start over")
        ck.clear()
    if threads:
        torch.set_num_threads(usable_threads(threads))
    t_tok, s_tok = load_tokenizer(cfg.teacher), load_tokenizer(cfg.student)
    check_same_vocab(cfg.teacher, t_tok, cfg.student, s_tok)
    acc = Accelerator()
    global_batch = cfg.batch * acc.num_processes
    seqs = TokenSequences.from_text(s_tok, load_text(cfg.data), seq_len=cfg.seq_len)
    epochs = check_enough(seqs, steps=cfg.steps, global_batch=global_batch, max_epochs=cfg.max_epochs,
                          seq_len=cfg.seq_len)
    windows = _eval_windows(s_tok, cfg)
    teacher_lm, student_lm = load_model(cfg.teacher), load_model(cfg.student)
    teacher, student = teacher_lm.model, student_lm.model
    check_same_vocab(cfg.teacher, t_tok, cfg.student, s_tok, teacher.config, student.config)
    layer_map = resolve_layer_map(cfg, teacher.config, student.config, source_folder(cfg.student)) \
        if cfg.hidden_weight else []
    teacher.requires_grad_(False)
    teacher.eval().to(acc.device)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start, history = 0, {"loss": [], "eval": [], "resumed_at": [], "seconds": {}}
    loaded = ck.load_latest() if resume else None
    if loaded is not None:
        start, state = loaded
        if state["config"] != cfg.to_dict():
            raise ConfigError(f"{ck.path}: checkpoint was written with a different config; resume needs the same "
                              "options (or --force to start over)")
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history = state["history"]
        history["resumed_at"].append(start)
        log.warning("resuming from %s at step %d", ck.path, start)
    elif resume:
        log.warning("%s: no checkpoint to resume from; starting at step 0", ck.path)
    if start == 0:
        history["perplexity_teacher"] = _perplexity(teacher, windows)
        history["eval"].append({"step": 0, "perplexity": _perplexity(student, windows)})
    order = SampleOrder(len(seqs), cfg.seed)
    loader = torch.utils.data.DataLoader(
        OrderedSamples(seqs, order, start * global_batch, (cfg.steps - start) * global_batch), batch_size=cfg.batch)
    student, opt, loader = acc.prepare(student, opt, loader)
    secs = history["seconds"]
    for k in ("teacher", "student", "eval", "checkpoint"):
        secs.setdefault(k, 0.0)

    def save(step: int) -> Path:
        t = time.perf_counter()
        path = ck.path / f"step-{step:06d}"
        _require_finite_weights(acc.unwrap_model(student), step)
        if acc.is_main_process:
            path = ck.save(step, {"model": acc.unwrap_model(student).state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "rng": rng_state(), "config": cfg.to_dict(),
                                  "history": history})
        acc.wait_for_everyone()
        secs["checkpoint"] += time.perf_counter() - t
        return path

    need_hidden = bool(layer_map)
    step, t_run, last_saved = start, time.perf_counter(), start
    with TrainBar(cfg.steps, start, cfg.tokens_per_step * acc.num_processes, main_process=acc.is_main_process) as bar:
        for ids in loader:
            if on_step is not None:
                on_step(step, ids, acc.unwrap_model(student))
            t0 = time.perf_counter()
            with torch.no_grad():
                t_out = teacher(ids, use_cache=False, output_hidden_states=need_hidden)
            t1 = time.perf_counter()
            s_out = student(ids, use_cache=False, output_hidden_states=need_hidden)
            loss = kd_loss(s_out.logits, t_out.logits, cfg.temperature)
            if cfg.ce_weight:
                loss = loss + cfg.ce_weight * ce_loss(s_out.logits, ids)
            if need_hidden:
                loss = loss + cfg.hidden_weight * hidden_loss(s_out.hidden_states, t_out.hidden_states, layer_map)
            value = float(acc.reduce(loss.detach(), "mean"))
            grad_norm = None
            if math.isfinite(value):
                acc.backward(loss)
                grad_norm = float(acc.clip_grad_norm_(student.parameters(), cfg.max_grad_norm or float("inf")))
            if not math.isfinite(value) or not math.isfinite(grad_norm):
                what = f"loss is {value}" if not math.isfinite(value) else f"gradient norm is {grad_norm}"
                good = _last_good(student, ck, step, save, acc)
                raise TrainingDivergedError(
                    f"distill step {step + 1}: {what}; stopped, last good checkpoint {good or 'none'} "
                    f"(lower --lr or raise --temperature, then --resume)")
            try:
                opt.step()
            except RuntimeError as e:  # torch refuses an update that does not fit float32 (lr 1e39)
                if "overflow" not in str(e):
                    raise
                raise TrainingDivergedError(f"distill step {step + 1}: the update overflows float32 "
                                            f"(lr {cfg.lr:g}); stopped before saving it (lower --lr)") from None
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            secs["teacher"] += t1 - t0
            secs["student"] += time.perf_counter() - t1
            history["loss"].append(round(value, 5))
            bar.update(step, value, sched.get_last_lr()[0])
            if step % cfg.eval_every == 0 or step == cfg.steps:
                t = time.perf_counter()
                ppl = _perplexity(acc.unwrap_model(student), windows)
                secs["eval"] += time.perf_counter() - t
                history["eval"].append({"step": step, "perplexity": ppl})
                bar.note(f"step {step}: eval perplexity {ppl}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
                last_saved = step
            if stop_after_minutes is not None and step < cfg.steps and \
                    time.perf_counter() - t_run > stop_after_minutes * 60:
                if last_saved != step:
                    save(step)
                bar.note(f"stopped after {stop_after_minutes:g} min at step {step}/{cfg.steps}; resume with --resume")
                return None
    final = acc.unwrap_model(student)
    final.eval()
    _require_finite_weights(final, step)
    tokens = cfg.steps * global_batch * cfg.seq_len
    train_s = secs["teacher"] + secs["student"]
    report: dict[str, Any] = {
        "teacher": cfg.teacher, "teacher_id": teacher_lm.model_id, "student": cfg.student,
        "student_id": student_lm.model_id, "params": param_count(final), "params_teacher": param_count(teacher),
        "steps": cfg.steps, "tokens_seen": tokens, "epochs": round(epochs, 4), "processes": acc.num_processes,
        "training_sequences": len(seqs), "layer_map": [list(p) for p in layer_map],
        "perplexity_teacher": history.get("perplexity_teacher"), "eval": history["eval"],
        "loss": history["loss"], "resumed_at": history["resumed_at"],
        "seconds": {k: round(v, 1) for k, v in secs.items()},
        "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        "teacher_share_of_step": round(secs["teacher"] / max(train_s, 1e-9), 3),
        "teacher_logits_bytes_per_step": cfg.tokens_per_step * acc.num_processes * int(final.config.vocab_size) * 2,
    }
    if acc.is_main_process:
        with ArtifactWriter(out, stage="distill", config=cfg, input_id=student_lm.model_id, force=force,
                            inputs=inputs) as art:
            final.save_pretrained(str(art.path))
            report["tokenizer_files"] = copy_tokenizer_files(source_folder(cfg.student), art.path, s_tok)
            art.report.update(report)
    acc.wait_for_everyone()
    return out


def _require_finite_weights(model, step: int) -> None:
    """A finite loss does not prove finite weights (lr=inf makes them inf after one finite step):
    nothing non-finite is saved as a checkpoint or an artifact."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise TrainingDivergedError(f"distill step {step}: weight {name} holds NaN or inf; stopped before "
                                        "saving it (lower --lr, then --resume from the last checkpoint)")


def _last_good(student, ck: CheckpointDir, step: int, save, acc) -> Path | None:
    """Save the weights before the failing step when they are still finite; else keep the last one."""
    if all(bool(torch.isfinite(p).all()) for p in acc.unwrap_model(student).parameters()):
        return save(step) if step > 0 else None
    steps = ck.steps()
    return ck.path / f"step-{steps[-1]:06d}" if steps else None
