"""``compress export ARTIFACT --format gguf --qtype Q4_0 --out DIR [--force]``.

The command only builds the format's config (the same one a recipe would hold) and calls the stage.
Formats are a table (:data:`EXPORTERS`): a new format is a function taking an :class:`ExportRequest`
plus one entry there; format-specific options go into ``ExportRequest.options``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from compress.config import load_config_file, suggest
from compress.outputs import write_text_output
from compress.errors import ConfigError

out = Console()


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    artifact: str
    out: Path
    force: bool = False
    dry_run: bool = False
    config: Path | None = None  # a config file of the format's stage (YAML)
    save_config: Path | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # CLI options given (None = not given)


def _gguf(req: ExportRequest) -> None:
    from export.gguf import GGUFConfig, export_gguf

    cfg = load_config_file(req.config, GGUFConfig) if req.config else GGUFConfig()
    given = {k: v for k, v in req.options.items() if v is not None}
    cfg = GGUFConfig.from_dict({**cfg.to_dict(), **given})
    if req.save_config:
        write_text_output(req.save_config, cfg.to_yaml(), inputs=[req.artifact])
    if req.dry_run:
        _gguf_dry_run(req, cfg)
        return
    path = export_gguf(req.artifact, cfg, req.out, force=req.force)
    _print_gguf(path)


def _gguf_dry_run(req: ExportRequest, cfg) -> None:
    """Everything that can be checked without reading weights: artifact, architecture, shapes, types,
    tokenizer, output directory; and per tensor its GGUF type and how it is carried."""
    from compress.manifest import check_writable_target
    from export.gguf.config import is_kquant
    from export.gguf.export import file_type, gguf_filename, prepare
    from export.gguf.plan import resolved_qtype, summarize
    from export.gguf.source import open_source

    src = open_source(req.artifact, qtype=cfg.qtype)
    check_writable_target(Path(req.out).absolute(), force=req.force, inputs=[req.artifact])
    spec, dims, plan, _md, tok = prepare(src, cfg)  # refuses a re-rounding without --requantize
    qtype = resolved_qtype(src, cfg)
    s = summarize(plan)
    kq = f" (F32, then llama.cpp quantizes to {qtype})" if is_kquant(qtype) else ""
    out.print(f"plan: {spec.gguf_arch}, {dims.n_layer} layers, {s['tensors']} tensors, {s['bytes'] / 1e6:.1f} MB{kq}"
              f" -> {gguf_filename(file_type(plan, qtype))}")
    out.print(f"types {json.dumps(s['types'])}; decisions {json.dumps(s['decisions'])}; "
              f"tokenizer {tok['tokenizer_source']}")
    t = Table(show_header=True, box=None, pad_edge=False)
    for col in ("GGUF tensor", "type", "how", "from"):
        t.add_column(col)
    vectors = [p for p in plan if len(p.shape) != 2]
    for p in plan:
        if len(p.shape) == 2:
            t.add_row(p.gguf_name, p.qtype.name, p.how, p.source)
    out.print(t)
    if vectors:
        kinds = sorted({p.qtype.name for p in vectors})
        out.print(f"and {len(vectors)} vectors (norms, biases) in {', '.join(kinds)}")
    if s["decisions"].get("requantized"):
        out.print(f"REQUANTIZED (--requantize): {s['decisions']['requantized']} layers' calibrated integers would be "
                  f"rounded again")


def _print_gguf(path: Path) -> None:
    from compress.manifest import read_manifest

    r = read_manifest(path.parent).report
    v = r["validation"]
    t = Table(title=str(path), show_header=False)
    t.add_row("size", f"{r['gguf_bytes'] / 1e6:.1f} MB ({r['input_weight_bytes'] / 1e6:.1f} MB in)")
    t.add_row("tensors", json.dumps(r["readback"]["types"]) + "  " + json.dumps(r["plan"]["decisions"]))
    ex = r.get("exactness")
    if ex and ex["checked"]:
        t.add_row("carried integers", f"{ex['checked']} tensors read back by gguf-py equal the artifact's weights "
                  f"({ex['bit_exact']} bit for bit; largest difference {ex['max_abs_err']:.3g}, "
                  f"{ex['max_err_over_bound']:.1%} of what float16 offsets allow)")
    t.add_row("llama.cpp vs PyTorch", f"top-1 {v['top1_agreement']:.2%} (min {v['min_top1']:.1%}), mean KL "
              f"{v['kl_mean']:.2e} (max {v['max_kl']:.1e}), max |dlogit| {v['max_abs_logit_diff']:.3g} "
              f"on {v['check_tokens']} tokens")
    if v.get("tolerance_basis"):
        t.add_row("tolerance", v["tolerance_basis"])
    t.add_row("perplexity", f"{v['llamacpp_perplexity']:.3f} llama.cpp vs {v['torch_perplexity']:.3f} PyTorch")
    t.add_row("tokenizer", f"{r['tokenizer']['tokenizer_source']}; chat template: "
              f"{'yes' if r['tokenizer']['chat_template'] else 'no'}")
    for note in r["notes"]:
        t.add_row("NOTE" if note.startswith("REQUANTIZED") else "note", note)
    out.print(t)


def _onnx(req: ExportRequest) -> None:
    from export.onnx.cli import run

    run(req)


# format -> handler; the handler builds its stage config from the request and runs the stage
EXPORTERS: dict[str, Callable[[ExportRequest], None]] = {"gguf": _gguf, "onnx": _onnx}


def register(app: typer.Typer) -> None:
    """Add ``compress export`` to the CLI app."""

    @app.command()
    def export(
        artifact: str = typer.Argument(..., help="Artifact folder, model folder or bundled model name."),
        format: str = typer.Option(..., "--format", "-f", help=f"Output format: {', '.join(EXPORTERS)}."),
        out_dir: Path = typer.Option(..., "--out", "-o", help="Output artifact directory."),
        qtype: Optional[str] = typer.Option(None, help="GGUF type: auto F32 F16 BF16 Q8_0 Q5_1 Q5_0 Q4_1 "
                                                      "Q4_0 Q4_K_M Q5_K_M Q6_K; "
                                                      "ONNX precision: auto fp32 fp16 int8 int4. Default auto: a "
                                                      "quantized artifact's integers as they are."),
        embeddings: Optional[str] = typer.Option(None, help="GGUF type of token_embd/output (auto by default)."),
        float_type: Optional[str] = typer.Option(None, help="GGUF, qtype auto: type of the matrices the artifact "
                                                            "kept in float (F16 by default, F32, BF16)."),
        check_tokens: Optional[int] = typer.Option(None, help="Token ids compared with PyTorch after writing."),
        accuracy_level: Optional[str] = typer.Option(None, help="ONNX MatMulNBits: auto (default: 4, 0 where "
                                                                "measured to need it), or 0 float activations "
                                                                ".. 4 int8 (fastest on CPU) on every node."),
        block_size: Optional[int] = typer.Option(None, help="ONNX: weights per scale where the export quantizes."),
        lm_head: Optional[str] = typer.Option(None, help="ONNX lm_head: auto float int8 int4."),
        max_length: Optional[int] = typer.Option(None, help="ONNX: longest sequence the file runs (0 = model's)."),
        ort_format: bool = typer.Option(False, "--ort-format", help="ONNX: also write onnxruntime's mobile .ort."),
        imatrix_tokens: Optional[int] = typer.Option(None, help="k-quants: calibration tokens for an importance "
                                                                 "matrix (0 = none)."),
        config: Optional[Path] = typer.Option(None, help="Stage config file (YAML); options override it."),
        save_config: Optional[Path] = typer.Option(None, help="Write the resulting config to this file."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and print the plan; write nothing."),
        force: bool = typer.Option(False, help="Replace a non-empty output directory."),
        requantize: bool = typer.Option(False, "--requantize", help="Allow a --qtype that rounds the artifact's "
                                                                    "calibrated integers again (refused otherwise)."),
    ) -> None:
        """Export an artifact (GGUF for llama.cpp, ONNX for onnxruntime), validated against PyTorch after writing."""
        if format not in EXPORTERS:
            raise ConfigError(f"--format: {format!r} is not an export format{suggest(format, EXPORTERS)}; "
                              f"choose one of: {', '.join(EXPORTERS)}")
        options = {"qtype": qtype, "embeddings": embeddings, "check_tokens": check_tokens,
                   "imatrix_tokens": imatrix_tokens, "requantize": requantize or None}
        onnx_only = {"accuracy_level": accuracy_level, "block_size": block_size, "lm_head": lm_head,
                     "max_length": max_length, "ort_format": ort_format or None}
        options.update({k: v for k, v in onnx_only.items() if v is not None})  # gguf never sees them unasked
        if float_type is not None:  # GGUF only: onnx never sees it unasked
            options["float_type"] = float_type
        EXPORTERS[format](ExportRequest(artifact, out_dir, force, dry_run, config, save_config, options))
