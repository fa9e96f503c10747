"""``compress chat ARTIFACT``: a terminal chat on the device, with the artifact's own chat template.

    compress chat runs/demo/export-gguf-q4km                      # llama.cpp
    compress chat runs/demo/export-onnx-int4 --profile phone      # onnxruntime, the phone's threads and budget
    compress chat model.Q4_K_M.gguf --once "What is the capital of France?"

The command only builds a :class:`ChatConfig` (the same fields ``--config`` reads) and runs the session.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

# What loading adds beyond the weights file and the process as it stands (measured on SmolLM2-135M with a
# 2,048-token context, 256 tokens generated: llama.cpp +92 MB (f16 KV cache 47 MB, compute buffers),
# onnxruntime +184 MB (its arena, pre-packed MatMulNBits weights, the fp32 KV cache)), rounded up.
RUNTIME_BUFFERS_MB = {"llama.cpp": 100, "onnxruntime": 200}  # by runtime name


def check_budget(artifact: Path, profile) -> float:
    """Estimated MB the chat will hold: the process now + the weights + the runtime's buffers.
    ConfigError naming the numbers when that is over the profile's memory budget."""
    from ..errors import ConfigError
    from .backends import model_bytes, resolve_chat_artifact
    from .session import rss_mb

    runtime, _ = resolve_chat_artifact(artifact)
    size_mb, now_mb, buffers = model_bytes(artifact) / 1e6, rss_mb(), RUNTIME_BUFFERS_MB[runtime]
    need = size_mb + now_mb + buffers
    budget = profile.memory_budget_mb
    if budget is not None and need > budget:
        raise ConfigError(f"{artifact}: {size_mb:.0f} MB of weights + {now_mb:.0f} MB this process holds + about "
                          f"{buffers} MB of runtime buffers = {need:.0f} MB, over the {profile.name!r} profile's "
                          f"memory budget of {budget:.0f} MB")
    return need


def run_chat(artifact: Path, cfg, *, profile_name: str | None = None, once: str | None = None) -> int:
    """Open the backend (profile threads / budget applied) and run one prompt or the REPL."""
    from .backends import open_backend, resolve_chat_artifact
    from .session import ChatSession, repl

    resolve_chat_artifact(artifact)  # a bad artifact fails before the profile is even read
    threads = cfg.threads
    if profile_name is not None:
        from compress.harness import load_profile
        from compress.harness.profiles import effective_threads

        profile = load_profile(profile_name)
        check_budget(artifact, profile)
        # the prediction above refuses early; from here the operating system holds the process to the
        # profile (its cores, its memory budget), as the device would
        from compress.harness.enforce import apply_to_self

        held = apply_to_self(profile)
        if held.limit_mb is not None:
            print(f"[memory budget {held.limit_mb:.0f} MB enforced by {held.mechanism}; "
                  f"{len(held.cores)} cores pinned]", file=sys.stderr)
        if threads is None:
            # the bench's rule: a 4-thread phone profile on a 2-core laptop would time the OS scheduler
            # (llama.cpp's spinning pool collapses when oversubscribed), so run at most one thread a core
            profile, note = effective_threads(profile)
            if note:
                print(f"[{note}]", file=sys.stderr)
            threads = profile.threads
    backend = open_backend(artifact, cfg, threads=threads or 2)
    session = ChatSession(backend, cfg)
    if once is None:
        return repl(session)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    session.ask(once, write)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[{session.stats_line()}]", file=sys.stderr)  # stdout keeps only the answer, for scripts
    return 0


def register(app: typer.Typer) -> None:
    """Add ``compress chat`` to the CLI."""

    @app.command()
    def chat(
        artifact: Path = typer.Argument(..., help="An export artifact (GGUF or ONNX) or a .gguf file."),
        profile: Optional[str] = typer.Option(None, help="Device profile: its threads, and refuse an artifact "
                                                         "over its memory budget."),
        once: Optional[str] = typer.Option(None, help="Answer this one prompt and exit (for scripts)."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer in tokens."),
        temperature: Optional[float] = typer.Option(None, help="0 = greedy (default); above 0 samples."),
        system: Optional[str] = typer.Option(None, help="System message."),
        threads: Optional[int] = typer.Option(None, help="CPU threads (default: the profile's, else 2)."),
        context: Optional[int] = typer.Option(None, help="Tokens of history kept (oldest turns dropped first)."),
        config: Optional[Path] = typer.Option(None, help="Chat config file (YAML); options override it."),
    ) -> None:
        """Chat with a compressed model in the terminal (llama.cpp for GGUF, onnxruntime for ONNX)."""
        from ..config import load_config_file
        from .config import ChatConfig

        cfg = load_config_file(config, ChatConfig) if config else ChatConfig()
        given: dict[str, Any] = {k: v for k, v in dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                                      system=system, threads=threads, context=context).items()
                                 if v is not None}
        cfg = ChatConfig.from_dict({**cfg.to_dict(), **given})
        rc = run_chat(artifact, cfg, profile_name=profile, once=once)
        if rc:
            raise typer.Exit(rc)
