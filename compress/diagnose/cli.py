"""``compress diagnose ARTIFACT``: the CLI builds the DiagnoseConfig a recipe would hold.

    compress diagnose out/smollm2-int4 --tokens 1024
    compress diagnose out/smollm2-int4-gguf --json                    # an export: quantizer or export?
    compress diagnose out/smollm2-int4 --apply --out out/fixed        # writes the fix and re-measures it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def diagnose(
        artifact: Path = typer.Argument(..., help="A quantize artifact, or its GGUF/ONNX export folder."),
        reference: Optional[str] = typer.Option(None, help="Reference model (default: the quantize manifest's input)."),
        data: Optional[str] = typer.Option(None, help="Text the loss is measured on (default: held-in moby-dick-calib)."),
        tokens: Optional[int] = typer.Option(None, help="Tokens measured (default 1024)."),
        granularity: Optional[str] = typer.Option(None, help="auto | tensor | block."),
        fix: Optional[str] = typer.Option(None, help="What --apply writes: keep8 (default) | group."),
        keep: Optional[int] = typer.Option(None, help="keep8: this many layers instead of the suggested number."),
        apply: bool = typer.Option(False, "--apply", help="Write the fixed artifact (--out) and re-measure it."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Fixed artifact directory (with --apply)."),
        report: Optional[Path] = typer.Option(None, "--report", help="Write diagnosis.md/.html/.json and layers.png here."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        threads: Optional[int] = typer.Option(None, help="Threads (default 2)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing --out artifact of ours."),
    ) -> None:
        """Which layers carry a quantized artifact's loss (or whether its export does), and the fix."""
        from compress.errors import ConfigError

        from . import DiagnoseConfig, diagnose as run, markdown, write_diagnosis

        opts = dict(reference=reference, data=data, tokens=tokens, granularity=granularity, fix=fix, keep=keep,
                    threads=threads)
        cfg = DiagnoseConfig.from_dict({**DiagnoseConfig().to_dict(), **{k: v for k, v in opts.items() if v is not None}},
                                       where="compress diagnose")
        if apply and out is None:
            raise ConfigError("--apply needs --out DIR for the fixed artifact")
        if out is not None and not apply:
            raise ConfigError("--out is where --apply writes the fixed artifact; add --apply")
        result = run(artifact, cfg, apply_out=out if apply else None, force=force)
        if report is not None:
            paths = write_diagnosis(result, report)
            result["report"] = {k: str(v) for k, v in paths.items()}
        if as_json:
            sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
        else:
            sys.stdout.write(markdown(result))
            if report is not None:
                sys.stdout.write(f"\nreport: {result['report']['html']}\n")
