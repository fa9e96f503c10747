"""``compress export ARTIFACT --format gguf --qtype Q4_K_M --out DIR``: the GGUF entry of export/cli.py.

    compress export out/smollm2-int4 --format gguf --out out/smollm2-gguf          # the artifact's integers
    compress export smollm2-135m --format gguf --qtype Q4_K_M --out out/smollm2-q4km
    compress export smollm2-135m --format gguf --qtype Q8_0 --dry-run               # the plan, per tensor

The options map one to one onto :class:`export.gguf.GGUFConfig` fields, and a config file (``--config``)
holds the same fields.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

out = Console()


def run(req) -> None:
    """Handler for ``--format gguf`` (an :class:`export.cli.ExportRequest`)."""
    from . import GGUFConfig, export_gguf

    cfg = req.build_config(GGUFConfig, {k: v for k, v in req.options.items() if v is not None})
    if req.dry_run:
        _dry_run(req, cfg)
        return
    path = export_gguf(req.artifact, cfg, req.out, force=req.force)
    _print(path)


def _dry_run(req, cfg) -> None:
    """Everything that can be checked without reading weights: artifact, architecture, shapes, types,
    tokenizer, output directory; and per tensor its GGUF type and how it is carried."""
    from compress.manifest import check_writable_target

    from .config import is_kquant
    from .export import file_type, gguf_filename, prepare
    from .plan import resolved_qtype, summarize
    from .source import open_source

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


def _print(path: Path) -> None:
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
