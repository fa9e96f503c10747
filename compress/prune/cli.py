"""``compress prune``: builds the PruneConfig a recipe file would hold and runs the stage.

    compress prune smollm2-135m --method depth --target 20 --out out/smol-20l
    compress prune smollm2-135m --method width --target ffn=1024,heads=6,kv_heads=2 --out out/smol-w
    compress prune smollm2-135m --method wanda --target 0.5 --out out/smol-wanda
    compress prune smollm2-135m --method 2:4 --out out/smol-24
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

_WIDTH_KEYS = {"ffn": "intermediate_size", "intermediate_size": "intermediate_size",
               "heads": "num_attention_heads", "num_attention_heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "kv": "num_key_value_heads",
               "num_key_value_heads": "num_key_value_heads"}


def parse_target(method: str, target: str | None) -> dict[str, Any]:
    """``--target`` by method: depth N (layers kept); width ffn=N,heads=N,kv_heads=N; wanda 0.5 or 50%."""
    from ..config import suggest
    from ..errors import ConfigError

    if target is None:
        return {}
    t = target.strip()
    try:
        if method == "depth":
            return {"layers": int(t)}
        if method == "wanda":
            return {"sparsity": float(t[:-1]) / 100 if t.endswith("%") else float(t)}
    except ValueError:
        want = "a layer count (e.g. 20)" if method == "depth" else "a sparsity (e.g. 0.5 or 50%)"
        raise ConfigError(f"--target: {target!r} is not {want} for --method {method}") from None
    if method == "width":
        out: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in t.split(","))):
            key, sep, val = part.partition("=")
            if key.strip() not in _WIDTH_KEYS:
                raise ConfigError(f"--target: {part!r} is not KEY=N with KEY one of ffn, heads, kv_heads"
                                  f"{suggest(key.strip(), _WIDTH_KEYS)}")
            if not sep or not val.strip().isdigit():  # the key is right: blame the value, not the key
                raise ConfigError(f"--target: {key.strip()}={val.strip()!r}: the value must be a whole number "
                                  f"(e.g. {key.strip()}=1024)")
            out[_WIDTH_KEYS[key.strip()]] = int(val)
        return out
    if t not in ("", "2:4"):
        raise ConfigError(f"--target: 2:4 sparsity has a fixed pattern; got {target!r}")
    return {}


def register(app: typer.Typer) -> None:
    """Add the ``prune`` command to the compress CLI."""

    @app.command()
    def prune(
        model: str = typer.Argument(..., help="Folder, .gguf file, bundled name or hub id."),
        method: Optional[str] = typer.Option(None, help="depth | width | wanda | 2:4."),
        target: Optional[str] = typer.Option(None, help="depth: layers kept (20); width: ffn=N,heads=N,kv_heads=N; "
                                                        "wanda: sparsity (0.5)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Artifact directory to write."),
        calib: Optional[str] = typer.Option(None, help="Calibration text: file, folder of .txt or bundled name."),
        samples: Optional[int] = typer.Option(None, help="Calibration windows."),
        seq_len: Optional[int] = typer.Option(None, help="Tokens per calibration window."),
        metric: Optional[str] = typer.Option(None, help="depth importance: cosine | perplexity."),
        eval_tokens: Optional[int] = typer.Option(None, help="Held-out tokens scored before/after (0 = none)."),
        config: Optional[Path] = typer.Option(None, help="Prune config file (YAML); options override it."),
        save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Prune a model: drop layers (depth), heads and MLP channels (width), or sparsify (wanda, 2:4)."""
        from ..config import load_config_file
        from ..errors import ConfigError
        from ..manifest import read_manifest
        from . import PruneConfig, prune as run_prune

        base = load_config_file(config, PruneConfig) if config else PruneConfig()
        d = base.to_dict()
        if method is not None:
            d["method"] = method
            if method != "depth":
                d["layers"] = None
        overrides = {k: v for k, v in dict(calib=calib, samples=samples, seq_len=seq_len, depth_metric=metric,
                                            eval_tokens=eval_tokens).items() if v is not None}
        cfg = PruneConfig.from_dict({**d, **overrides, **parse_target(d["method"], target)})
        if save_config:
            from ..outputs import write_text_output

            write_text_output(save_config, cfg.to_yaml(), inputs=(model, cfg.calib))
        if out is None:
            raise ConfigError("prune: --out DIR is required")
        path = run_prune(model, cfg, out, force=force)
        report = read_manifest(path).report
        if as_json:
            print(json.dumps(report, indent=2))
            return
        _print_report(path, cfg, report)


def _print_report(path: Path, cfg, r: dict[str, Any]) -> None:
    con = Console() if sys.stdout.isatty() else Console(width=200)
    t = Table(title=f"{path} ({cfg.describe()})", show_header=False)
    t.add_row("parameters", f"{r['params_before']:,} -> {r['params_after']:,} ({r['params_ratio']:.1%})")
    if "layers_dropped" in r:
        t.add_row("layers dropped", ", ".join(f"{k} ({v:.4f})" for k, v in r["layers_dropped"].items()))
        t.add_row("layers kept", " ".join(map(str, r["layers_kept"])))
    if "head_dim" in r:
        t.add_row("sizes", f"ffn {r['intermediate_size'][0]} -> {r['intermediate_size'][1]}, heads "
                           f"{r['num_attention_heads'][0]} -> {r['num_attention_heads'][1]}, kv heads "
                           f"{r['num_key_value_heads'][0]} -> {r['num_key_value_heads'][1]} (head_dim {r['head_dim']})")
    if "sparsity_per_layer" in r:
        vals = list(r["sparsity_per_layer"].values())
        t.add_row("sparsity", f"{r['sparsity_decoder_linears']:.2%} of decoder linear weights; per layer "
                              f"{min(vals):.2%} .. {max(vals):.2%} ({len(vals)} layers, see --json)")
        t.add_row("speed", r["speed"])
    if "eval" in r:
        e = r["eval"]
        t.add_row("perplexity", f"{e['perplexity']:.3f} vs {e['perplexity_reference']:.3f} before pruning on "
                                f"{e['tokens']} held-out tokens of {e['data']}")
    t.add_row("time / peak RSS", f"{r['seconds']:.1f} s / {r['peak_rss_mb']:.0f} MB")
    con.print(t)
