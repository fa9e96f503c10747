"""``compress distill``: builds the DistillConfig a recipe file would hold and runs the stage.

    compress distill --teacher smollm2-135m --student out/smol-20l --steps 200 --seq-len 256 --batch 4 \\
        --out out/smol-20l-kd
    compress distill ... --out out/smol-20l-kd --resume          # after a kill: continue from the checkpoint
    accelerate launch --num_processes 4 -m compress.cli distill ...   # the same command on 4 GPUs
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the ``distill`` command to the compress CLI."""

    @app.command()
    def distill(
        teacher: Optional[str] = typer.Option(None, help="Teacher model: folder, bundled name, .gguf or hub id."),
        student: Optional[str] = typer.Option(None, help="Student model folder (e.g. a prune artifact)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Artifact directory for the trained student."),
        data: Optional[str] = typer.Option(None, help="Training text: file, folder of .txt or bundled name."),
        steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per training sequence."),
        batch: Optional[int] = typer.Option(None, help="Sequences per step (per process)."),
        lr: Optional[float] = typer.Option(None, help="Peak learning rate (AdamW)."),
        warmup: Optional[int] = typer.Option(None, help="Warm-up steps."),
        schedule: Optional[str] = typer.Option(None, help="cosine | linear | constant."),
        temperature: Optional[float] = typer.Option(None, help="Softmax temperature of the KD loss."),
        ce_weight: Optional[float] = typer.Option(None, help="Weight of the plain next-token loss (0 = pure KD)."),
        hidden_weight: Optional[float] = typer.Option(None, help="Weight of the hidden-state loss (0 = off)."),
        checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
        eval_every: Optional[int] = typer.Option(None, help="Steps between held-out perplexity evaluations."),
        eval_tokens: Optional[int] = typer.Option(None, help="Evaluation tokens (0 = none)."),
        max_epochs: Optional[float] = typer.Option(None, help="Most passes over the training text allowed."),
        seed: Optional[int] = typer.Option(None, help="Seed of the data order."),
        config: Optional[Path] = typer.Option(None, help="Distill config file (YAML); options override it."),
        save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
        checkpoint_dir: Optional[Path] = typer.Option(None, help="Checkpoint directory (default OUT.checkpoints)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
        stop_after: Optional[float] = typer.Option(None, help="Checkpoint and stop after this many minutes "
                                                              "(continue later with --resume)."),
        threads: Optional[int] = typer.Option(None, help="CPU threads."),
        force: bool = typer.Option(False, "--force", help="Replace the output and earlier checkpoints."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Distill a teacher into a (pruned) student: KL on softened logits, checkpoints, resume."""
        from ..config import load_config_file
        from ..errors import ConfigError
        from ..manifest import read_manifest
        from . import DistillConfig, distill as run_distill

        base = load_config_file(config, DistillConfig).to_dict() if config else {"type": "distill"}
        overrides: dict[str, Any] = {k: v for k, v in dict(
            teacher=teacher, student=student, data=data, steps=steps, seq_len=seq_len, batch=batch, lr=lr,
            warmup=warmup, schedule=schedule, temperature=temperature, ce_weight=ce_weight,
            hidden_weight=hidden_weight, checkpoint_every=checkpoint_every, eval_every=eval_every,
            eval_tokens=eval_tokens, max_epochs=max_epochs, seed=seed).items() if v is not None}
        if "student" not in {**base, **overrides}:
            raise ConfigError("distill: --student is required (a model folder, e.g. from compress prune)")
        cfg = DistillConfig.from_dict({**base, **overrides})
        if save_config:
            from ..outputs import write_text_output

            write_text_output(save_config, cfg.to_yaml(), inputs=(cfg.teacher, cfg.student, cfg.data, cfg.eval_data))
        if out is None:
            raise ConfigError("distill: --out DIR is required")
        path = run_distill(cfg, out, resume=resume, force=force, checkpoint_dir=checkpoint_dir,
                           stop_after_minutes=stop_after, threads=threads)
        if int(os.environ.get("RANK", "0")) != 0:  # under accelerate/torchrun, one report per run
            return
        if path is None:
            print(f"stopped after {stop_after:g} min with a checkpoint; continue with the same command plus --resume")
            raise typer.Exit(3)
        report = read_manifest(path).report
        if as_json:
            print(json.dumps({k: v for k, v in report.items() if k != "loss"}, indent=2))
            return
        _print_report(path, report)


def _print_report(path: Path, r: dict[str, Any]) -> None:
    con = Console() if sys.stdout.isatty() else Console(width=200)
    t = Table(title=str(path), show_header=False)
    t.add_row("teacher / student", f"{r['teacher']} ({r['params_teacher']:,} params) -> {r['student']} "
                                   f"({r['params']:,} params)")
    t.add_row("training", f"{r['steps']} steps, {r['tokens_seen']:,} tokens ({r['epochs']:.2f} epochs), "
                          f"{r['tokens_per_s']:.0f} tok/s, {r['processes']} process(es)")
    if r["resumed_at"]:
        t.add_row("resumed at steps", ", ".join(map(str, r["resumed_at"])))
    evals = [e for e in r["eval"] if e["perplexity"] is not None]
    if evals:
        t.add_row("perplexity", " -> ".join(f"{e['perplexity']:.2f} (step {e['step']})" for e in evals)
                  + (f"; teacher {r['perplexity_teacher']:.2f}" if r.get("perplexity_teacher") else ""))
    if r["loss"]:
        t.add_row("loss", f"{r['loss'][0]:.4f} (first step) -> {r['loss'][-1]:.4f} (last)")
    s = r["seconds"]
    t.add_row("time", f"teacher {s['teacher']:.0f} s ({r['teacher_share_of_step']:.0%} of steps), student "
                      f"{s['student']:.0f} s, eval {s['eval']:.0f} s, checkpoints {s['checkpoint']:.0f} s")
    con.print(t)
