"""The diagnosis as Markdown, a self-contained HTML page, a per-layer bar chart (PNG) and JSON.

    paths = write_diagnosis(result, Path("out/diag"))   # {"markdown", "html", "json", "chart"}
    print(markdown(result))                              # the same text the terminal shows
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

_TOP = 15  # rows in the table and bars in the chart


def _mb(b: int | float) -> str:
    return f"{b / 1e6:+.2f} MB"


def headline(result: dict[str, Any]) -> str:
    """One line: where the loss is (the gate's failure message uses it)."""
    ex = result.get("export")
    if ex and ex["blame"] == "export":
        worst = (ex.get("tensors") or {}).get("differs") or []
        where = f"; tensor {worst[0]['tensor']} ({worst[0]['gguf']}) differs from the artifact" if worst else ""
        return (f"the export, not the quantizer: {ex['runtime']} adds KL {ex['kl_export']:.4g} over the artifact in "
                f"PyTorch (whose own KL is {ex['kl_quantizer']:.4g}){where}")
    att = result["attribution"]
    units = att["units"]
    if not units:
        return f"KL {att['kl']:.4g}; no quantized layer to attribute it to"
    u = units[0]
    return (f"the quantizer: {u['label']} carries {100 * u['share']:.0f}% of KL {att['kl']:.4g} "
            f"(restoring it alone recovers {u['recovered']:.4g})")


def markdown(result: dict[str, Any]) -> str:
    att = result["attribution"]
    out = [f"## Diagnosis: {Path(result['artifact']).name}", "",
           f"- artifact: {result['artifact']}" + (f" (source {result['source']})" if result['source'] != result['artifact'] else ""),
           f"- reference: {result['reference']}; scheme {result.get('scheme')}",
           f"- loss: KL {att['kl']:.5g} against the reference on {att['tokens']} tokens of {att['data']} (PyTorch)",
           f"- measurement: {att['measurement']}",
           f"- verdict: {headline(result)}", ""]
    ex = result.get("export")
    if ex:
        out += ["### Quantizer or export?", "",
                f"| what | KL |", "|---|---|",
                f"| quantizer: reference vs artifact in PyTorch | {ex['kl_quantizer']:.5g} |",
                f"| export: artifact in PyTorch vs {ex['runtime']} | {ex['kl_export']:.5g} |",
                f"| total: reference vs {ex['runtime']} | {ex['kl_runtime']:.5g} |", "",
                f"Blamed: **{ex['blame']}** (the export when it adds at least half of the quantizer's KL).", ""]
        t = ex.get("tensors")
        if t:
            out += [f"Per-tensor check of {t['file']} ({t['tensors']} tensors; {t['measurement']}):", "",
                    "| tensor | GGUF | type | carried | relative error | expected | differs |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['tensor']} | {r['gguf']} | {r['type']} | {r['how']} | {r['rel_error']:.3g} | "
                    f"{r['expected']:.3g} | {'**yes**' if r['differs'] else 'no'} |" for r in t["worst"]]
            out.append("")
    out += ["### Layers ranked by the loss they carry", "",
            "| # | layer | kind | params | KL with it restored | recovered | share |", "|---|---|---|---|---|---|---|"]
    for i, u in enumerate(att["units"][:_TOP]):
        out.append(f"| {i + 1} | {u['label']} | {u['kind']} | {u['params']:,} | {u['kl_restored']:.5g} | "
                   f"{u['recovered']:.5g} | {100 * u['share']:.1f}% |")
    if len(att["units"]) > _TOP:
        out.append(f"| | ({len(att['units']) - _TOP} more in the JSON) | | | | | |")
    out += ["", "### Fixes (predicted effect and cost)", ""]
    k = result["fixes"]["keep8"]
    for o in k["options"]:
        mark = " **(suggested)**" if o["n"] == k["suggested"] else ""
        how = "measured with the fix in place" if o.get("basis") == "measured" else "predicted (additive)"
        out.append(f"- keep {o['n']} layer(s) at 8 bits ({', '.join(o['units'][-3:])}{' ...' if o['n'] > 3 else ''}): "
                   f"{_mb(o['extra_bytes'])}, KL from {att['kl']:.4g} to {o['predicted_kl']:.4g} "
                   f"{how}{mark}")
    if k["options"]:
        out.append(f"  - basis: {k['basis']}")
    g = result["fixes"]["group"]
    if g:
        out.append(f"- group size {g['group_size']} -> {g['new_group_size']} ({g['tensors']} tensors): "
                   f"{_mb(g['extra_bytes'])}, KL from {att['kl']:.4g} to {g['predicted_kl']:.4g} predicted ({g['basis']})")
    tb = result["fixes"]["tables"]
    quant_tables = {k2: v for k2, v in tb.items() if v != "keep"}
    out.append("- embeddings/lm_head: " + (", ".join(f"{k2} {v} (ranked above with the layers)" for k2, v in
                                                        quant_tables.items()) if quant_tables else
                                           "kept in float: no loss there"))
    out.append(f"- {result['fixes']['calibration']}")
    ap = result.get("applied")
    if ap:
        meas = ap.get("measured_kl_runtime", ap["measured_kl_pytorch"])
        where = ap.get("runtime", "PyTorch")
        out += ["", "### Applied", "",
                f"- {ap['fix']}: {ap['how']}; wrote {ap['out']}" + (f" and {ap['export_out']}" if ap.get("export_out") else ""),
                f"- KL predicted {ap['predicted_kl']:.5g}, measured {meas:.5g} in {where} "
                f"({100 * ap['prediction_error']:+.1f}% off); in PyTorch {ap['measured_kl_pytorch']:.5g}",
                f"- cost: {_mb(ap['extra_bytes'])}"]
    return "\n".join(out) + "\n"


def chart(result: dict[str, Any], path: Path) -> Path:
    """Horizontal bars: KL recovered per layer (top ``_TOP``), share of the total on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = result["attribution"]
    units = att["units"][:_TOP][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(units), 3) + 1.5), dpi=110)
    vals = [u["recovered"] for u in units]
    ax.barh([u["label"] for u in units], vals, color=["tab:red" if u["share"] >= 0.2 else "tab:blue" for u in units])
    for i, u in enumerate(units):
        ax.text(max(u["recovered"], 0), i, f" {100 * u['share']:.0f}%", va="center", fontsize=8)
    ax.set_xlabel(f"KL recovered when restored alone (artifact KL {att['kl']:.4g})")
    ax.set_title("Where the quantization loss is")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _html_body(md: str) -> str:
    """The few Markdown forms :func:`markdown` writes (headings, bullets, tables) as HTML."""
    import re

    e = html.escape
    out: list[str] = []
    table = False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not table else "td"
            out.append(("<table>" if not table else "") + "<tr>" + "".join(f"<{tag}>{e(c)}</{tag}>" for c in cells)
                       + "</tr>")
            table = True
            continue
        if table:
            out.append("</table>")
            table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{e(line.lstrip('#').strip())}</h{level}>")
        elif line.lstrip().startswith("- "):
            out.append(f"<li>{e(line.lstrip()[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{e(line)}</p>")
    if table:
        out.append("</table>")
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", "\n".join(out))


def write_diagnosis(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """diagnosis.md, diagnosis.html (chart embedded), diagnosis.json and layers.png in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"chart": chart(result, out / "layers.png")}
    md = markdown(result) + "\n![layers](layers.png)\n"
    paths["markdown"] = out / "diagnosis.md"
    paths["markdown"].write_text(md)
    paths["json"] = out / "diagnosis.json"
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    png = base64.b64encode(paths["chart"].read_bytes()).decode()
    body = _html_body(markdown(result))
    paths["html"] = out / "diagnosis.html"
    paths["html"].write_text("<!doctype html><html><head><meta charset='utf-8'><title>diagnosis</title><style>"
                             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
                             "padding:3px 8px}th{background:#f2f2f2}</style></head>"
                             f"<body style='font-family:system-ui,sans-serif;max-width:1100px;margin:2em'>{body}"
                             f"<img alt='layers' src='data:image/png;base64,{png}'></body></html>")
    return paths
