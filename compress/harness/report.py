"""``write_report``: Markdown, a self-contained HTML page and PNG plots from a bench run.

    paths = write_report("runs/bench-laptop")   # RUN_DIR/report/{report.md, report.html, *.png, rows.jsonl}

The report goes into ``RUN_DIR/report/``, beside the run's own files, so the run's manifest (which
lists only what bench wrote) stays valid. The HTML embeds every plot as a data URI and links the
PNG file next to it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from compress.manifest import read_manifest

from .runner import read_rows
from .tables import accuracy_table, budget_table, disagreement_table, front_table, latency_table, pareto

REPORT_DIR = "report"


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write the report of ``run_dir``; returns {"markdown", "html", "rows", plot name: path}."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    meta = read_manifest(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    paths: dict[str, Path] = {}
    for name, plot in plots(rows, out).items():
        paths[name] = plot
    tables = [("Accuracy: every runtime against the reference on the same tokens", accuracy_table(rows)),
              ("Quality vs size: which files are on the Pareto front (no other file is as small and as good)",
               front_table(rows)),
              ("Finding: runtimes disagree on the same artifact (itself and its exports)", disagreement_table(rows)),
              ("Latency, memory and roofline", latency_table(rows)),
              (f"Budgets of profile {rows[0]['profile']!r}", budget_table(rows, meta.report.get("profile", {})))]
    tables = [(title, t) for title, t in tables if t]
    head = _header(meta)
    md = [f"# Bench report: {run_dir.name}", "", *[f"- {h}" for h in head], ""]
    for title, (cols, body) in tables:
        md += [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(r) + " |" for r in body] + [""]
    for name, p in paths.items():
        md += [f"![{name}]({p.name})", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md))
    paths["html"] = out / "report.html"
    paths["html"].write_text(_html(run_dir.name, head, tables, {k: v for k, v in paths.items() if v.suffix == ".png"}))
    paths["rows"] = out / "rows.jsonl"
    paths["rows"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _header(meta) -> list[str]:
    r, c = meta.report, meta.config
    out = []
    if "reference" in r:
        acc = (f"{r['tokens']} tokens of {r['data']} in {r['windows']} windows" if "tokens" in r else "no accuracy phase")
        out.append(f"reference: {r['reference']} (id {r.get('reference_id', '?')}), {acc}")
    if r.get("mc_examples"):
        out.append("multiple choice: " + ", ".join(f"{k} ({v} examples)" for k, v in r["mc_examples"].items()))
    out.append(f"latency: {c['prompt_tokens']}-token prompt, {c['new_tokens']} new tokens (greedy), "
               f"{c['warmup']} warm-up + {c['repetitions']} repetitions, median [min-max]")
    prof = r.get("profile", {})
    out.append(f"profile: {prof.get('name')} ({prof.get('threads')} threads requested, {r.get('threads_used')} used "
               f"on {r.get('cpu_count')} cores)")
    if r.get("bandwidth_gb_s"):
        out.append(f"memory bandwidth: {r['bandwidth_gb_s']:.1f} GB/s (read, measured with {r.get('threads_used')} threads)")
    la = r.get("load_average_start")
    if la:
        out.append(f"load average at start/end: {la[0]:.2f} / {r.get('load_average_end', [float('nan')])[0]:.2f}")
    out.append(f"versions: " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()))
    if r.get("skipped"):
        out.append("skipped (no chosen runtime can load them): " + "; ".join(r["skipped"]))
    return out


_SPECS = {"quality_vs_size": ("file size (MB)", "file_mb", False),
          "quality_vs_decode": ("decode speed (tokens/s)", "decode_tok_s", True)}


def plots(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """quality vs size and quality vs decode speed, the Pareto front highlighted, points labelled."""
    import matplotlib.pyplot as plt

    made = {}
    for name in _SPECS:
        fig, _ = quality_figure(rows, name)
        if fig is None:
            continue
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        made[name] = path
    return made


def quality_figure(rows: list[dict[str, Any]], name: str):
    """(figure, label annotations) of plot ``name`` (a key of ``_SPECS``), or (None, []) without points.

    The legend sits outside the axes and the layout is fixed before the labels are placed, so the
    label boxes measured during placement are the ones saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .labels import place_labels

    xlabel, key, higher_better = _SPECS[name]
    pts = [r for r in rows if r.get("perplexity_ratio") is not None and r.get(key) is not None]
    if not pts:
        return None, []
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    xs, ys = [r[key] for r in pts], [r["perplexity_ratio"] for r in pts]
    front = pareto(xs, ys, higher_better)
    for i in range(len(pts)):
        on = i in front
        ax.scatter(xs[i], ys[i], s=60 if on else 30, color="tab:red" if on else "tab:blue", zorder=3,
                   edgecolor="black" if on else "none")
    fx = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in fx], [ys[i] for i in fx], color="tab:red", lw=1.2, ls="--", zorder=2,
            label="Pareto front")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="reference")
    ax.margins(x=0.12, y=0.15)  # room for the labels of points at the edges
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity ÷ reference perplexity (lower is better)")
    better = "right" if higher_better else "left"
    ax.set_title(f"quality vs {xlabel.split(' (')[0]} ({better} and lower is better)")
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    labels = place_labels(ax, xs, ys, [f"{r['label']} ({r['runtime']})" for r in pts], avoid=[legend])
    return fig, labels


def _html(title: str, head: list[str], tables, pngs: dict[str, Path]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
             "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;border:1px solid #ddd}"
             "</style></head><body>", f"<h1>Bench report: {e(title)}</h1><ul>"]
    parts += [f"<li>{e(h)}</li>" for h in head] + ["</ul>"]
    for t, (cols, body) in tables:
        parts.append(f"<h2>{e(t)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in body]
        parts.append("</table>")
    for name, p in pngs.items():
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h2>{e(name.replace('_', ' '))}</h2><a href='{e(p.name)}'>"
                     f"<img alt='{e(name)}' src='data:image/png;base64,{data}'></a>")
    parts.append("</body></html>")
    return "\n".join(parts)
