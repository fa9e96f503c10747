"""Bench rows as text tables (columns, rows of strings) for the Markdown/HTML report and the terminal."""

from __future__ import annotations

import statistics
from typing import Any

Table = tuple[list[str], list[list[str]]]


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _spread(r: dict[str, Any], key: str, fmt: str) -> str:
    if r.get(key) is None:
        return "-"
    return f"{r[key]:{fmt}} [{r[key + '_min']:{fmt}}-{r[key + '_max']:{fmt}}]"


def _rt(r: dict[str, Any]) -> str:
    v = r.get("runtime_version")
    return f"{r['runtime']} {v}" if v else r["runtime"]


def accuracy_table(rows: list[dict[str, Any]]) -> Table | None:
    """The cross-runtime parity table: perplexity, KL, top-1 agreement and MC accuracy per runtime."""
    rows = [r for r in rows if r.get("perplexity") is not None]
    if not rows:
        return None
    tasks = sorted({t for r in rows for t in (r.get("mc") or {})})
    cols = ["artifact", "runtime", "stage", "size MB", "perplexity", "ppl ratio", "KL", "top-1"]
    cols += [f"MC {t}" for t in tasks] + (["MC mean"] if tasks else [])
    body = []
    for r in rows:
        line = [r["label"], _rt(r), r["stage"], _f(r["file_mb"], ".1f"), _f(r["perplexity"], ".3f"),
                _f(r["perplexity_ratio"], ".4f"), _f(r["kl"], ".4f"), _f(r["top1"], ".1%")]
        line += [_f((r.get("mc") or {}).get(t), ".1%") for t in tasks]
        if tasks:
            line.append(_f(r.get("mc_mean"), ".1%"))
        body.append(line)
    return cols, body


def latency_table(rows: list[dict[str, Any]]) -> Table | None:
    rows = [r for r in rows if r.get("decode_tok_s") is not None]
    if not rows:
        return None
    depths = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith("decode_tok_s@") and
                     k.count("_") == 2})
    cols = ["artifact", "runtime", "threads", "load s", "TTFT ms", "prefill tok/s", "decode tok/s",
            *[f"decode tok/s at {d} context" for d in depths],
            "peak RSS MB (imports)", "RSS anon/file MB", "MB read/token", "roofline tok/s", "of roofline"]
    body = []
    for r in rows:
        ttft = {k: r[k] * 1000 for k in ("ttft_s", "ttft_s_min", "ttft_s_max")}
        threads = str(r["threads"]) + (f" (of {r['threads_requested']})" if r["threads"] != r["threads_requested"] else "")
        body.append([r["label"], _rt(r) + (f" [{r['execution_provider']}]" if r.get("execution_provider") else ""),
                     threads, _f(r["load_s"], ".2f"),
                     f"{ttft['ttft_s']:.0f} [{ttft['ttft_s_min']:.0f}-{ttft['ttft_s_max']:.0f}]",
                     _spread(r, "prefill_tok_s", ".0f"), _spread(r, "decode_tok_s", ".1f"),
                     *[_spread(r, f"decode_tok_s@{d}", ".1f") if f"decode_tok_s@{d}" in r else "-" for d in depths],
                     f"{r['peak_rss_mb']:.0f} ({r['rss_start_mb']:.0f})", _split(r), _f(r["bytes_per_token"] / 1e6, ".2f"),
                     _f(r.get("roofline_tok_s"), ".0f"), _f(r.get("roofline_fraction"), ".0%")])
    return cols, body


def _split(r: dict[str, Any]) -> str:
    """Anonymous / file-backed resident MB after generating ("-" for rows measured before the split)."""
    anon, file = r.get("rss_anon_generated_mb"), r.get("rss_file_generated_mb")
    return "-" if anon is None or file is None else f"{anon:.0f} / {file:.0f}"


def budget_table(rows: list[dict[str, Any]], profile: dict[str, Any]) -> Table | None:
    if not profile:
        return None
    store, mem = profile.get("storage_budget_mb"), profile.get("memory_budget_mb")

    def verdict(v):
        return "-" if v is None else ("fits" if v else "TOO BIG")

    cols = ["artifact", "runtime", "size MB", f"storage (budget {_f(store, '.0f')} MB)", "peak RSS MB",
            f"memory (budget {_f(mem, '.0f')} MB)"]
    def memory(r):
        # measured under the OS-enforced budget where the row says how; otherwise a comparison of figures
        how = r.get("memory_enforcement")
        v = verdict(r.get("fits_memory"))
        if r.get("memory_verdict"):
            return f"{v}: {r['memory_verdict']}"
        return f"{v} (enforced: {how})" if how and how != "none" and r.get("fits_memory") is not None else v

    body = [[r["label"], r["runtime"], _f(r["file_mb"], ".1f"), verdict(r.get("fits_storage")),
             _f(r.get("peak_rss_mb"), ".0f"), memory(r)] for r in rows]
    return cols, body


DISAGREE_PPL = 0.02  # relative perplexity gap between runtimes on one artifact that is a finding (issue #15)


# export types that keep the input's weights: carried exactly (auto) or float (up to float16 rounding)
_KEEPS_WEIGHTS = {None, "auto", "F32", "F16", "BF16", "fp32", "fp16", "float32", "float16"}


def _same_weights(m) -> bool:
    """Whether an export runs its input's weights. llama.cpp's Q4_0 and Q4_K_M of one float model are two
    artifacts, not one in two runtimes: grouping them made the report call their quality gap a runtime
    disagreement."""
    return m.config.get("qtype") in _KEEPS_WEIGHTS and not m.report.get("requantized")


def artifact_source(spec: str) -> str:
    """The quantize/float artifact a row runs: an export's manifest input, else the row's own artifact."""
    from pathlib import Path

    from compress.manifest import read_manifest

    p = Path(str(spec))
    try:
        if p.is_dir() and (p / "manifest.json").is_file():
            m = read_manifest(p, check_files=False)
            if m.stage.startswith("export") and isinstance(m.report.get("input"), str) and _same_weights(m):
                return str(Path(m.report["input"]).resolve())
        return str(p.resolve()) if p.exists() else str(spec)
    except Exception:  # noqa: BLE001 - a finding must never break the report
        return str(spec)


def disagreement_table(rows: list[dict[str, Any]], tol: float = DISAGREE_PPL) -> Table | None:
    """Cross-runtime disagreement as a finding: rows of one artifact (itself and its exports) whose
    perplexity is more than ``tol`` (relative) from the group's median are named; two rows that
    disagree are both named (nothing says which one is right)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("perplexity") is not None and r.get("artifact"):
            groups.setdefault(artifact_source(r["artifact"]), []).append(r)
    body = []
    for src, rs in groups.items():
        if len(rs) < 2:
            continue
        for r in rs:
            # three or more: against the median of all (robust to the one that is off); two: each other
            med = statistics.median(o["perplexity"] for o in (rs if len(rs) > 2 else [o for o in rs if o is not r]))
            gap = r["perplexity"] / med - 1
            if abs(gap) > tol:
                who = "disagrees with " + ", ".join(f"{o['label']} ({o['runtime']})" for o in rs if o is not r)
                body.append([r["label"], _rt(r), _f(r["perplexity"], ".3f"), _f(med, ".3f"), f"{gap:+.1%}", who])
    if not body:
        return None
    return ["artifact", "runtime", "perplexity", "median of the group", "gap", "finding"], body


def pareto(xs: list[float], ys: list[float], higher_x_better: bool) -> set[int]:
    """Indices no other point beats on both axes (lower y always better; x lower or higher as told)."""
    sign = -1 if higher_x_better else 1
    front = set()
    for i in range(len(xs)):
        xi, yi = sign * xs[i], ys[i]
        dominated = any(sign * xs[j] <= xi and ys[j] <= yi and (sign * xs[j] < xi or ys[j] < yi)
                        for j in range(len(xs)) if j != i)
        if not dominated:
            front.add(i)
    return front


def front_table(rows: list[dict[str, Any]]) -> Table | None:
    """Each scored file against every other on (file size, perplexity ratio) and (file size, KL): on the
    front, or the smallest file that is at least as small and as good (across runtimes: what a user can ship
    instead). The quality-vs-size plot draws the first; KL is the finer measure of the same loss."""
    rows = [r for r in rows if r.get("perplexity_ratio") is not None and r.get("file_mb") is not None]
    if len(rows) < 2:
        return None
    cols = ["artifact", "runtime", "size MB", "ppl ratio", "KL", "front (size, ppl ratio)", "front (size, KL)"]
    verdicts = {metric: _front_verdicts(rows, metric) for metric in ("perplexity_ratio", "kl")}
    body = [[r["label"], _rt(r), _f(r["file_mb"], ".1f"), _f(r["perplexity_ratio"], ".4f"), _f(r.get("kl"), ".4f"),
             verdicts["perplexity_ratio"].get(i, "-"), verdicts["kl"].get(i, "-")] for i, r in enumerate(rows)]
    return cols, body


def _front_verdicts(rows: list[dict[str, Any]], metric: str) -> dict[int, str]:
    """Row index -> "yes" or what dominates it on (file size, ``metric``), for the rows that have ``metric``."""
    idx = [i for i, r in enumerate(rows) if r.get(metric) is not None]
    pts = [rows[i] for i in idx]
    front = pareto([r["file_mb"] for r in pts], [r[metric] for r in pts], higher_x_better=False)
    return {i: "yes" if k in front else _dominated_by(pts[k], pts, metric) for k, i in enumerate(idx)}


def _dominated_by(r: dict[str, Any], pts: list[dict[str, Any]], metric: str) -> str:
    better = [o for o in pts if o is not r and o["file_mb"] <= r["file_mb"] and o[metric] <= r[metric]]
    best = min(better, key=lambda o: (o["file_mb"], o[metric]))
    return f"no: {best['label']} ({_rt(best)}) is {best['file_mb']:.1f} MB at {best[metric]:.4f}"
