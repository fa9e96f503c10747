"""``check``: the CI regression gate — a bench run against a baseline file, within tolerances.

    result = check("runs/bench", "benchmarks/baselines/tiny-pipeline.json", CheckConfig(ppl=0.02))
    result.passed          # False when perplexity, KL, top-1, MC accuracy or size regressed
    print(result.table())  # a readable diff
    write_baseline("runs/bench", "benchmarks/baselines/tiny-pipeline.json")

Rows are matched by (artifact label, runtime). A baseline made for another reference model or other
evaluation tokens is refused, not compared: the numbers would not mean the same thing.
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
from compress.manifest import read_manifest, unique_keys

from .runner import read_rows
from .config import CheckConfig

FORMAT = "compress-bench-baseline"
VERSION = 1
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


def write_baseline(run_dir: str | Path, baseline_path: str | Path) -> Path:
    """Write the run's figures as the new baseline (``--update-baseline``)."""
    from compress.outputs import write_text_output

    p = Path(baseline_path)
    text = json.dumps(baseline_from_run(run_dir), indent=2) + "\n"
    check_finite_rows(json.loads(text)["rows"], p)  # a NaN figure is never written as the standard
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_text_output(p, text, inputs=[run_dir], option="--baseline")


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a baseline file (JSON)")
    if not p.is_file():
        raise ConfigError(f"{p}: baseline file does not exist (write one with --update-baseline)")
    try:
        data = json.loads(p.read_text(), object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{p}: malformed baseline, not JSON ({e})") from None
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
    """A NaN baseline figure makes every comparison with it pass."""
    for i, r in enumerate(rows):
        for metric in _RULES:
            v = r.get(metric)
            if v is not None and not is_finite_number(v):
                raise ConfigError(f"{p}: malformed baseline, rows[{i}] ({r['label']}, {r['runtime']}) {metric} is "
                                  f"{v!r}, not a finite number")


def check(run_dir: str | Path, baseline_path: str | Path, cfg: CheckConfig = CheckConfig()) -> CheckResult:
    """Compare a bench run with a baseline; ``passed`` is False on any regression past ``cfg``."""
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
            tol = getattr(cfg, tol_name)
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
