"""What a distillation run checks and builds before the loop: vocabularies, the layer map, the
learning-rate schedule, and the progress bar (loss, tokens/s, ETA)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from ..errors import ConfigError, ModelLoadError
from ..manifest import MANIFEST, read_manifest
from ..progress import console, enabled
from ..prune.model_ops import source_folder  # noqa: F401  (re-exported for the loop)
from .config import DistillConfig

log = logging.getLogger(__name__)


def check_same_vocab(teacher: str, t_tok, student: str, s_tok, t_cfg=None, s_cfg=None) -> None:
    """KD compares distributions over the same token ids: the tokenizers (and, once loaded, the
    models' output sizes) must agree. The message names both sizes."""
    if t_cfg is not None and s_cfg is not None:
        tv, sv = int(t_cfg.vocab_size), int(s_cfg.vocab_size)
        if tv != sv:
            raise ModelLoadError(f"distill: teacher {teacher} has vocab_size {tv}, student {student} has {sv}; "
                                 "distillation needs the same vocabulary")
        return
    tn, sn = len(t_tok), len(s_tok)
    if tn != sn or t_tok.get_vocab() != s_tok.get_vocab():
        raise ModelLoadError(f"distill: teacher {teacher} and student {student} use different tokenizers "
                             f"({tn} and {sn} tokens); distillation needs the same vocabulary")


def resolve_layer_map(cfg: DistillConfig, t_cfg, s_cfg, student_folder: Path | None) -> list[tuple[int, int]]:
    """Student->teacher layer pairs for the hidden-state loss: the config's, else the layers a depth
    prune kept (from the student's manifest), else identity when both have the same depth."""
    nt, ns = int(t_cfg.num_hidden_layers), int(s_cfg.num_hidden_layers)
    pairs = [tuple(p) for p in cfg.layer_map]
    if not pairs and student_folder is not None and (student_folder / MANIFEST).is_file():
        rep = read_manifest(student_folder, check_files=False).report
        if isinstance(rep.get("layers_kept"), list) and len(rep["layers_kept"]) == ns:
            pairs = list(enumerate(rep["layers_kept"]))
    if not pairs and nt == ns:
        pairs = [(i, i) for i in range(ns)]
    if not pairs:
        raise ConfigError(f"distill.layer_map: student has {ns} layers, teacher {nt}, and the student's manifest "
                          "does not say which teacher layers it kept; give layer_map pairs")
    for s, t in pairs:
        if s >= ns or t >= nt:
            raise ConfigError(f"distill.layer_map: pair [{s}, {t}] is outside student {ns} / teacher {nt} layers")
    if int(t_cfg.hidden_size) != int(s_cfg.hidden_size):
        raise ConfigError(f"distill.hidden_weight: hidden sizes differ (teacher {t_cfg.hidden_size}, student "
                          f"{s_cfg.hidden_size}); the hidden-state loss compares them directly")
    return pairs


class lr_lambda:  # noqa: N801 - used like a function by LambdaLR; a class so its state is saved
    """Linear warm-up, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""

    def __init__(self, cfg: DistillConfig):
        self.warmup, self.steps, self.floor, self.kind = cfg.warmup, cfg.steps, cfg.min_lr_ratio, cfg.schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        frac = min((step - self.warmup) / max(self.steps - self.warmup, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if self.kind == "cosine" else 1 - frac
        return self.floor + (1 - self.floor) * shape


class TrainBar:
    """A rich bar with loss, tokens/s and ETA on a terminal; log lines every 10 steps otherwise."""

    def __init__(self, total: int, start: int, tokens_per_step: int, *, main_process: bool = True):
        self.total, self.start, self.tps, self.main = total, start, tokens_per_step, main_process
        self.prog: Progress | None = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> TrainBar:
        if enabled() and self.main:  # one bar per run, not one per process
            self.prog = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.prog.__enter__()
            self.task = self.prog.add_task("distill", total=self.total, completed=self.start, loss="-", tps="-")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.prog is not None:
            self.prog.__exit__(*exc)

    def update(self, step: int, loss: float, lr: float) -> None:
        elapsed = time.perf_counter() - self.t0
        tps = (step - self.start) * self.tps / max(elapsed, 1e-9)
        if self.prog is not None:
            self.prog.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:.0f}")
        elif self.main and (step % 10 == 0 or step == self.total):
            eta = (self.total - step) * elapsed / max(step - self.start, 1)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %.0f s", step, self.total, loss, lr, tps, eta)

    def note(self, msg: str) -> None:
        if self.prog is not None:
            self.prog.console.log(msg)
        elif self.main:
            log.info(msg)
