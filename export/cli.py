"""``compress export ARTIFACT --format gguf --qtype Q4_0 --out DIR [--force]``.

The command only builds the format's config (the same one a recipe would hold) and calls the stage.
Formats are the export rows of :mod:`compress.kinds`: a new format is a handler taking an
:class:`ExportRequest` (``export/FORMAT/cli.py: run``) named in its row; format-specific options go into
``ExportRequest.options``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import typer

from compress.kinds import EXPORT_FORMATS, by_format, resolve


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    artifact: str
    out: Path
    force: bool = False
    dry_run: bool = False
    config: Path | None = None  # a config file of the format's stage (YAML)
    save_config: Path | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # CLI options given (None = not given)

    def build_config(self, cls: type, given: dict[str, Any]):
        """The format's config: the ``--config`` file's fields (or the defaults) with the options ``given``
        on top, written to ``--save-config`` when asked.

        >>> cfg = req.build_config(GGUFConfig, {"qtype": "Q4_0"})
        """
        from compress.config import load_config_file
        from compress.outputs import write_text_output

        base = load_config_file(self.config, cls) if self.config else cls()
        cfg = cls.from_dict({**base.to_dict(), **given})
        if self.save_config:
            write_text_output(self.save_config, cfg.to_yaml(), inputs=[self.artifact])
        return cfg


def register(app: typer.Typer) -> None:
    """Add ``compress export`` to the CLI app."""

    @app.command()
    def export(
        artifact: str = typer.Argument(..., help="Artifact folder, model folder or bundled model name."),
        format: str = typer.Option(..., "--format", "-f", help=f"Output format: {', '.join(EXPORT_FORMATS)}."),
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
        kv_dtype: Optional[str] = typer.Option(None, help="ONNX: element type of the KV cache, float32 (default) or "
                                                          "float16 (half the cache's memory, slower attention on CPU)."),
        scale_type: Optional[str] = typer.Option(None, help="ONNX: MatMulNBits scales of the artifact's integers, "
                                                            "auto (default: float16 where the activations allow), "
                                                            "float16 or float32."),
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
        handler = resolve(by_format(format, where="--format").export_cli)
        options = {"qtype": qtype, "embeddings": embeddings, "check_tokens": check_tokens,
                   "imatrix_tokens": imatrix_tokens, "requantize": requantize or None}
        onnx_only = {"accuracy_level": accuracy_level, "block_size": block_size, "lm_head": lm_head,
                     "max_length": max_length, "ort_format": ort_format or None, "kv_dtype": kv_dtype,
                     "scale_type": scale_type}
        options.update({k: v for k, v in onnx_only.items() if v is not None})  # gguf never sees them unasked
        if float_type is not None:  # GGUF only: onnx never sees it unasked
            options["float_type"] = float_type
        handler(ExportRequest(artifact, out_dir, force, dry_run, config, save_config, options))
