"""``check``: the CI regression gate — a bench run against a baseline file, within tolerances.

    result = check("runs/bench", "benchmarks/baselines/tiny-pipeline.json", CheckConfig(ppl=0.02))
    result.passed          # False when perplexity, KL, top-1, MC accuracy or size regressed
    print(result.table())  # a readable diff
    write_baseline("runs/bench", "benchmarks/baselines/tiny-pipeline.json")

Rows are matched by (artifact label, runtime). A baseline made for another reference model or other
evaluation tokens is refused, not compared: the numbers would not mean the same thing.

Version 2 baselines written with spread runs carry each row's own tolerances, set from the baseline's spread
(``write_baseline(run, path, spread_runs=[run2, ...])``: the same bench repeated): a figure that did not move between runs gets a
tight floor (perplexity 0.1%, KL 2% + 1e-6, top-1 one token, size 0.1%), one that moved gets 4x its spread;
multiple-choice accuracy gets 2 binomial standard errors of its sample (sqrt(p(1-p)/n), n examples), so one
flipped answer of 40 does not fail the gate. A name given with ``--tolerance`` overrides them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.finite import is_finite_number
from compress.jsonfile import read_json
from compress.manifest import read_manifest

from .runner import read_rows
from .config import CheckConfig

FORMAT = "compress-bench-baseline"
VERSION = 2  # 2: per-row tolerances from the baseline's spread (version 1 still loads)
_KEEP = ("perplexity", "kl", "top1", "mc_mean", "file_bytes", "decode_tok_s")
# metric -> (tolerance field, relative?, higher is better?)
_RULES = {"perplexity": ("ppl", True, False), "kl": ("kl", False, False), "top1": ("top1", False, True),
          "mc_mean": ("mc", False, True), "file_bytes": ("size", True, False), "decode_tok_s": ("decode", True, True)}


@dataclasses.dataclass
class CheckResult:
    passed: bool
    lines: list[dict[str, Any]]  # one per compared metric: label, runtime, metric, baseline, current, limit, status
    baseline: Path

    def failures(self) -> list[dict[str, Any]]:
        return [ln for ln in self.lines if ln["status"] != "ok" and ln["status"] != "new"]

    def table(self) -> str:
        """The comparison as aligned text, regressions marked."""
        head = ["artifact", "runtime", "metric", "baseline", "current", "limit", "status"]
        rows = [[ln["label"], ln["runtime"], ln["metric"], _fmt(ln["baseline"]), _fmt(ln["current"]),
                 _fmt(ln["limit"]), ln["status"]] for ln in self.lines]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
        verdict = "PASSED" if self.passed else f"FAILED: {len(self.failures())} regression(s) against {self.baseline}"
        return "\n".join(out + [verdict])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def baseline_from_run(run_dir: str | Path) -> dict[str, Any]:
    rep = read_manifest(run_dir).report
    rows = [{"label": r["label"], "runtime": r["runtime"], "artifact_id": r["artifact_id"],
             **{k: r.get(k) for k in _KEEP}} for r in read_rows(run_dir)]
    return {"format": FORMAT, "version": VERSION, "reference": rep.get("reference"),
            "reference_id": rep.get("reference_id"), "data": rep.get("data"), "tokens": rep.get("tokens"),
            "profile": rep.get("profile", {}).get("name"),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}


def write_baseline(run_dir: str | Path, baseline_path: str | Path, spread_runs: list[str | Path] = ()) -> Path:
    """Write the run's figures as the new baseline (``--update-baseline``). With ``spread_runs`` (the same
    bench run again) each row also gets tolerances from the measured spread; without, check's own apply."""
    from compress.outputs import write_text_output

    p = Path(baseline_path)
    base = baseline_from_run(run_dir)
    if spread_runs:
        add_tolerances(base, [baseline_from_run(r) for r in spread_runs], read_manifest(run_dir).report)
    text = json.dumps(base, indent=2) + "\n"
    check_finite_rows(json.loads(text)["rows"], p)  # a NaN figure is never written as the standard
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_text_output(p, text, inputs=[run_dir, *spread_runs], option="--baseline")


_FLOORS = {"perplexity": 1e-3, "file_bytes": 1e-3}  # relative, for figures that did not move
MC_Z = 2.0  # binomial standard errors a multiple-choice accuracy may fall


def add_tolerances(base: dict[str, Any], others: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Per-row ``spread`` (max - min over the runs) and ``tolerance`` of every gated metric, in place."""
    runs = [{(r["label"], r["runtime"]): r for r in o["rows"]} for o in others]
    tokens = max(int(report.get("tokens") or 0), 1)
    n_mc = sum((report.get("mc_examples") or {}).values()) or 0
    for row in base["rows"]:
        key = (row["label"], row["runtime"])
        spread, tol = {}, {}
        for metric in ("perplexity", "kl", "top1", "mc_mean", "file_bytes"):
            v = row.get(metric)
            if v is None:
                continue
            vals = [v] + [r[key][metric] for r in runs if key in r and r[key].get(metric) is not None]
            sp = max(vals) - min(vals)
            spread[metric] = sp
            if metric in _FLOORS:  # relative tolerances
                tol[metric] = max(4 * sp / max(abs(v), 1e-30), _FLOORS[metric])
            elif metric == "kl":
                tol[metric] = max(4 * sp, 0.02 * v + 1e-6)
            elif metric == "top1":
                tol[metric] = max(4 * sp, 1 / tokens)
            elif n_mc:
                tol[metric] = max(4 * sp, MC_Z * math.sqrt(max(v * (1 - v), 0.25 / n_mc) / n_mc))
        row["spread"], row["tolerance"] = spread, tol
    base["spread_runs"] = 1 + len(others)
    base["tolerance_basis"] = ("4x the spread over the runs; floors when nothing moved: perplexity 0.1%, KL 2% + "
                               f"1e-6, top-1 one token, size 0.1%; MC {MC_Z:g} binomial standard errors")


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a baseline file (JSON)")
    if not p.is_file():
        raise ConfigError(f"{p}: baseline file does not exist (write one with --update-baseline)")
    data = read_json(p, ConfigError, problem="malformed baseline, not JSON", unique=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{p}: malformed baseline, not a {FORMAT} file (write one with --update-baseline)")
    if data.get("version", 0) > VERSION:
        raise ConfigError(f"{p}: baseline version {data['version']} is newer than this compress understands")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "label" in r and "runtime" in r for r in rows):
        raise ConfigError(f"{p}: malformed baseline, 'rows' must be a list of objects with label and runtime")
    check_finite_rows(rows, p)
    return data


def check_finite_rows(rows: list[dict[str, Any]], p: Path) -> None:
    """A NaN baseline figure (or tolerance) makes every comparison with it pass."""
    for i, r in enumerate(rows):
        tol = r.get("tolerance")
        if tol is not None and not (isinstance(tol, dict) and all(
                is_finite_number(v) and v >= 0 for v in tol.values())):
            raise ConfigError(f"{p}: malformed baseline, rows[{i}] ({r['label']}, {r['runtime']}) tolerance "
                              f"{tol!r} must map metrics to finite numbers >= 0")
        for metric in _RULES:
            v = r.get(metric)
            if v is not None and not is_finite_number(v):
                raise ConfigError(f"{p}: malformed baseline, rows[{i}] ({r['label']}, {r['runtime']}) {metric} is "
                                  f"{v!r}, not a finite number")


def check(run_dir: str | Path, baseline_path: str | Path, cfg: CheckConfig = CheckConfig(),
          overrides: frozenset[str] | set[str] = frozenset()) -> CheckResult:
    """Compare a bench run with a baseline; ``passed`` is False on any regression past the baseline row's
    own tolerances (version 2), else ``cfg``'s; ``overrides`` (tolerance names: ppl, kl, ...) use ``cfg``."""
    base = load_baseline(baseline_path)
    cur = baseline_from_run(run_dir)
    for key in ("reference_id", "data", "tokens"):
        if base.get(key) != cur.get(key):
            what = {"reference_id": "reference model", "data": "evaluation text", "tokens": "token count"}[key]
            raise ConfigError(
                f"{baseline_path}: baseline is for another {what} ({key} {base.get(key)!r}, reference "
                f"{base.get('reference')!r}) than this run ({cur.get(key)!r}, reference {cur.get('reference')!r}); "
                "refusing to compare (write a new one with --update-baseline)")
    now = {(r["label"], r["runtime"]): r for r in cur["rows"]}
    lines: list[dict[str, Any]] = []
    for b in base["rows"]:
        key = (b["label"], b["runtime"])
        c = now.pop(key, None)
        if c is None:
            lines.append(dict(label=key[0], runtime=key[1], metric="-", baseline=None, current=None, limit=None,
                              status="MISSING from this run"))
            continue
        for metric, (tol_name, relative, higher) in _RULES.items():
            if metric == "decode_tok_s" and not cfg.latency:
                continue
            bv, cv = b.get(metric), c.get(metric)
            if bv is None:
                continue
            own = (b.get("tolerance") or {}).get(metric)
            tol = own if own is not None and tol_name not in overrides else getattr(cfg, tol_name)
            # a current figure that is NaN/inf (or missing) is a regression, never a pass by a False comparison
            if higher:
                limit = bv * (1 - tol) if relative else bv - tol
                bad = not is_finite_number(cv) or cv < limit - 1e-12
            else:
                limit = bv * (1 + tol) if relative else bv + tol
                bad = not is_finite_number(cv) or cv > limit + 1e-12
            lines.append(dict(label=key[0], runtime=key[1], metric=metric, baseline=bv, current=cv, limit=limit,
                              status="REGRESSED" if bad else "ok"))
    for key in now:
        lines.append(dict(label=key[0], runtime=key[1], metric="-", baseline=None, current=None, limit=None,
                          status="new"))
    passed = not any(ln["status"] not in ("ok", "new") for ln in lines)
    return CheckResult(passed, lines, Path(baseline_path))


def parse_tolerances(spec: str | None, latency: bool, base: CheckConfig | None = None) -> CheckConfig:
    """``"ppl=0.02,kl=0.005"`` -> CheckConfig; unknown names and non-numbers are ConfigErrors."""
    data = (base or CheckConfig()).to_dict()
    for part in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--tolerance: {part!r} is not NAME=VALUE (names: ppl, kl, top1, mc, size, decode)")
        try:
            data[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--tolerance: {name.strip()}={value!r} is not a number") from None
        if not math.isfinite(data[name.strip()]):  # a NaN limit compares False: every regression would pass
            raise ConfigError(f"--tolerance: {name.strip()}={value.strip()} is not a finite number")
    data["latency"] = latency or data.get("latency", False)
    return CheckConfig.from_dict(data, where="--tolerance")


def tolerance_names(spec: str | None) -> frozenset[str]:
    """The names a ``--tolerance`` spec sets (they override a baseline row's own tolerances)."""
    return frozenset(p.partition("=")[0].strip() for p in (spec or "").split(",") if p.strip())
