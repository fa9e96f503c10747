"""The ``compress`` command line. Each command only builds the config a recipe file would hold and
calls the stage; bad input becomes one line on stderr and exit code 2 (``--debug`` for tracebacks)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import typer

try:  # typer >= 0.2x vendors its own click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - older typer on plain click
    from click import exceptions as _cx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config import load_config_file
from .errors import CompressError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make language models small and fast for laptops and phones, with the evidence.")
out = Console()
err = Console(stderr=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.WARNING)
    # transformers sets its logger's level from this when it is first imported (after this callback), which
    # undid the line above: every Phi-3.5 config load printed its advice on rope_parameters["factor"]
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if verbose else "error")
    # transformers' own tqdm bars ("Loading weights") would put extra lines around the one-line errors
    # on stderr; progress is shown by compress.progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers.utils.logging" in sys.modules:  # imported already (in-process use): env is read too late
        sys.modules["transformers.utils.logging"].disable_progress_bar()
        sys.modules["transformers.utils.logging"].set_verbosity(logging.WARNING if verbose else logging.ERROR)


@app.command()
def models() -> None:
    """List the bundled models and whether they are cached."""
    from .bundled import BUNDLED
    from .fetch import cached_folder
    from .manifest import is_complete

    t = Table("name", "model", "install", "cached")
    for b in BUNDLED.values():
        t.add_row(b.name, b.description, b.install, "yes" if is_complete(cached_folder(b.name)) else "no")
    out.print(t)


@app.command()
def fetch(name: str = typer.Argument(..., help="A bundled model name (see `compress models`)."),
          force: bool = typer.Option(False, help="Import again even when cached.")) -> None:
    """Turn a bundled GGUF once into a cached fp32 safetensors folder, checked against llama.cpp."""
    from .fetch import FetchConfig, fetch as do_fetch
    from .manifest import read_manifest

    folder = do_fetch(FetchConfig(name=name), force=force)
    rep = read_manifest(folder).report
    out.print(f"{name}: {folder}")
    out.print(f"import check: perplexity {rep['torch_perplexity']:.3f} (transformers) vs "
              f"{rep['llamacpp_perplexity']:.3f} (llama.cpp) on {len(rep['check_ids'])} tokens, "
              f"top-1 agreement {rep['top1_agreement']:.1%}")


@app.command(name="eval")
def eval_(
    model: str = typer.Argument(..., help="Folder, .gguf file, bundled name or hub id."),
    reference: Optional[str] = typer.Option(None, help="Model to compare with (KL, top-1 agreement)."),
    data: Optional[str] = typer.Option(None, help="Text file, folder of .txt, or a bundled text name."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated BIG-bench tasks or task.json paths; '' for none."),
    max_tokens: Optional[int] = typer.Option(None, help="Score at most this many text tokens."),
    window: Optional[int] = typer.Option(None, help="Tokens per window (BOS included where used)."),
    stride: Optional[int] = typer.Option(None, help="Tokens between window starts."),
    mc_limit: Optional[int] = typer.Option(None, help="Examples per task, drawn with a fixed seed (0 = all)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    config: Optional[Path] = typer.Option(None, help="Eval config file (YAML); options override it."),
    save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    allow_pickle: bool = typer.Option(False, help="Allow pickle (.bin) checkpoints."),
    trust_remote_code: bool = typer.Option(False, help="Allow a model's own code to run."),
) -> None:
    """Perplexity, KL/top-1 agreement against a reference, and multiple-choice accuracy."""
    from runtimes import DeviceProfile
    from runtimes.torch_runtime import TorchRuntime

    from .data import load_mc_task, load_text
    from .evaluate import EvalConfig, evaluate, prepare_eval
    from .models import load_tokenizer, resolve_model

    cfg = load_config_file(config, EvalConfig) if config else EvalConfig()
    overrides: dict[str, Any] = {k: v for k, v in dict(data=data, max_tokens=max_tokens, window=window, stride=stride,
                                                      mc_limit=mc_limit, threads=threads).items() if v is not None}
    if tasks is not None:
        overrides["tasks"] = tuple(t.strip() for t in tasks.split(",") if t.strip())
    cfg = EvalConfig.from_dict({**cfg.to_dict(), **overrides})
    # Everything that can be checked without weights is checked before loading them.
    src = resolve_model(model)
    if reference:
        resolve_model(reference)
    load_text(cfg.data)
    for t in cfg.tasks:
        load_mc_task(t)
    plan = None
    if src.kind != "gguf":  # a GGUF's tokenizer costs a full metadata import: tokenize after loading
        plan = prepare_eval(load_tokenizer(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), cfg)
    profile = DeviceProfile(threads=cfg.threads)
    t0 = time.perf_counter()
    rt = TorchRuntime()
    rt.load(model, profile, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    load_s = time.perf_counter() - t0
    plan = plan or prepare_eval(rt.tokenizer, cfg)
    ref = None
    if reference:
        ref = TorchRuntime()
        ref.load(reference, profile, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if save_config:
        from .outputs import write_text_output

        write_text_output(save_config, cfg.to_yaml(), inputs=(model, reference, cfg.data))
    result = evaluate(rt, rt.tokenizer, cfg, reference=ref, plan=plan)
    payload = {"model": model, "model_id": rt.loaded.model_id, "import_check": rt.loaded.checks, "reference": reference,
               "reference_id": ref.loaded.model_id if ref else None, "load_s": round(load_s, 2),
               "config": cfg.to_dict(), "result": result.to_dict()}
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    _print_eval(payload)


def _print_eval(p: dict[str, Any]) -> None:
    r = p["result"]
    t = Table(title=f"{p['model']} ({r['runtime']})", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("detail")
    bos = "BOS per window" if r["bos"] else "no BOS"
    t.add_row("perplexity", f"{r['perplexity']:.3f}", f"{r['tokens']} tokens of {r['data']}, {r['windows']} windows, {bos}")
    if r["kl"] is not None:
        t.add_row("KL vs reference", f"{r['kl']:.5f}", f"reference {p['reference']}")
        t.add_row("top-1 agreement", f"{r['top1_agreement']:.2%}", "")
    for name, m in r["mc"].items():
        t.add_row(f"MC {name}", f"{m['accuracy']:.1%}", f"{m['n']} examples, chance {m['chance']:.1%}")
    chk = p.get("import_check") or {}
    if "llamacpp_perplexity" in chk:
        t.add_row("import check", "ok", f"perplexity {chk['torch_perplexity']:.2f} here vs "
                                        f"{chk['llamacpp_perplexity']:.2f} in llama.cpp on the same tokens")
    t.add_row("load time", f"{p['load_s']:.1f} s", "")
    t.add_row("eval time", f"{sum(r['seconds'].values()):.1f} s", f"text {r['seconds']['text']:.1f} s")
    out.print(t)


@app.command()
def info(artifact: Path = typer.Argument(..., help="An artifact directory."),
         as_json: bool = typer.Option(False, "--json", help="Print the raw manifest.")) -> None:
    """Print an artifact's manifest, and the chain of artifacts it was made from."""
    from .manifest import lineage, read_manifest

    m = read_manifest(artifact)
    if as_json:
        print(m.to_json())
        return
    t = Table(title=str(artifact), show_header=False)
    t.add_row("stage", m.stage)
    t.add_row("content id", m.content_id)
    t.add_row("input id", str(m.input_id))
    t.add_row("created", f"{m.created} ({m.wall_time_s:.1f} s)")
    t.add_row("git", str(m.git_revision))
    t.add_row("config", json.dumps(m.config))
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    t.add_row("files", f"{len(m.files)} files, {sum(m.files.values()) / 1e6:.1f} MB")
    t.add_row("chain", "\n".join(f"{'<- ' if i else ''}{c['stage']} {c['content_id']}  {c['path']}"
                                  for i, c in enumerate(lineage(artifact))))
    for k, v in m.report.items():
        if k != "check_ids":
            t.add_row(f"report.{k}", json.dumps(v) if not isinstance(v, str) else v)
    out.print(t)


__import__("compress.quantize.cli", fromlist=["register"]).register(app)  # issue #3: compress quantize
__import__("export.cli", fromlist=["register"]).register(app)  # issue #4: compress export (export/cli.py)
__import__("compress.harness.cli", fromlist=["register"]).register(app)  # issue #5: bench, report, check, profiles
__import__("compress.chat.cli", fromlist=["register"]).register(app)  # issue #7: compress chat
__import__("compress.pipeline.cli", fromlist=["register"]).register(app)  # issue #7: compress run
__import__("compress.prune.cli", fromlist=["register"]).register(app)  # issue #6: compress prune
__import__("compress.distill.cli", fromlist=["register"]).register(app)  # issue #6: compress distill
__import__("compress.diagnose.cli", fromlist=["register"]).register(app)  # issue #15: compress diagnose


def _finite_floats(cmd) -> None:
    """typer reads 'inf' and 'nan' as floats; no option of ours means either (`--lr inf` trained NaNs),
    so every command's float options are checked once here, before the command runs."""
    for sub in getattr(cmd, "commands", {}).values():
        _finite_floats(sub)
    callback = getattr(cmd, "callback", None)
    if callback is None:
        return
    flags = {p.name: (p.opts[0] if getattr(p, "opts", None) else p.name) for p in cmd.params}

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{flags.get(name, name)}: {v} is not a finite number")
        return callback(*args, **kwargs)

    cmd.callback = checked


def _usage_line(e, argv: list[str]) -> str:
    """click's usage error as one line (its usage block and 'Try --help' hint are left out), naming the
    option and the value given when it is a bad value."""
    text = "; ".join(ln.strip() for ln in e.format_message().splitlines() if ln.strip()).rstrip(".")
    opts = list(getattr(getattr(e, "param", None), "opts", None) or [])
    if isinstance(e, _cx.BadParameter) and opts:
        given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in opts]
        given += [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in opts and "=" in a]
        if given:
            reason = e.message.rstrip(".") if isinstance(e.message, str) else text
            return f"{opts[0]}: {given[-1]!r} is not valid ({reason})"
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point: typed errors → one line and exit 2; Ctrl-C → exit 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = typer.main.get_command(app)
        _finite_floats(command)
        rc = command.main(args=argv, prog_name="compress", standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into Exit(130) itself, so the except below never sees it
            err.print("interrupted")
        return rc if isinstance(rc, int) else 0
    except CompressError as e:
        if debug:
            traceback.print_exc()
        err.print(Text("error: ", style="red") + Text(str(e)), highlight=False, soft_wrap=True)
        return e.exit_code
    except OSError as e:  # disk full, permission denied, ...: the file system's words and the path, one line
        if debug:
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        err.print(Text("error: ", style="red") + Text(f"{e.strerror or e}{where}"), highlight=False, soft_wrap=True)
        return 2
    except _cx.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `compress`: the help is the answer
            e.show()
            return e.exit_code
        err.print(Text("error: ", style="red") + Text(_usage_line(e, argv)), highlight=False, soft_wrap=True)
        return 2
    except _cx.ClickException as e:
        err.print(Text("error: ", style="red") + Text(e.format_message()), highlight=False, soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
