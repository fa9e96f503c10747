"""``bench``: accuracy, latency, memory and roofline of artifacts × runtimes, written as a run directory.

    run = bench(BenchConfig(profile="phone"), ["runs/smol-q4_0", "runs/smol-onnx-int4"], "runs/bench-phone")
    rows = read_rows(run)        # one dict per artifact × runtime (RUN_DIR/rows.jsonl)

Two phases. Accuracy: this process loads the reference and every artifact × runtime and scores them
on the same token windows (reference logits once per window). Latency and peak RSS: each artifact ×
runtime in its own subprocess (:mod:`.worker`), so the memory figure is that runtime's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from compress import errors
from compress.errors import CompressError, ConfigError
from compress.manifest import ArtifactWriter, check_writable_target
from compress.progress import steps

from .config import BenchConfig
from .profiles import effective_threads, load_profile, verdicts
from .targets import Target, resolve_reference, resolve_target, select_runtimes

log = logging.getLogger(__name__)

STAGE = "bench"
ROWS = "rows.jsonl"


def bench(cfg: BenchConfig, artifacts: list[str | Path], out_dir: str | Path, *, force: bool = False) -> Path:
    """Measure ``artifacts`` (paths, ``.gguf`` files, bundled names, ``LABEL=PATH``) under ``cfg`` and write
    the run directory ``out_dir`` (rows.jsonl + manifest); returns it."""
    out_dir = Path(out_dir).absolute()
    inputs = [*map(str, artifacts), cfg.reference, cfg.data]
    check_writable_target(out_dir, force=force, inputs=inputs)
    requested = load_profile(cfg.profile)
    profile, thread_note = effective_threads(requested)
    targets = [resolve_target(a) for a in artifacts]
    if not targets:
        raise ConfigError("bench: give at least one artifact")
    reference = resolve_reference(targets, cfg.reference)
    inputs.append(reference)  # the reference the manifests lead to is read too: the writer checks it
    if cfg.include_reference:
        ref_target = resolve_target(f"{_ref_label(reference)}={reference}" if Path(reference).exists() else reference,
                                    plain_folder=True)
        if ref_target.artifact_id not in {t.artifact_id for t in targets}:
            targets.insert(0, ref_target)
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"bench: two artifacts share a label ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))}); "
                          "name them with LABEL=PATH")
    pairs = [(t, r) for t in targets for r in select_runtimes(t, cfg.runtimes)]
    skipped = [f"{t.label} ({', '.join(t.loaders)})" for t in targets if not select_runtimes(t, cfg.runtimes)]
    if not pairs:
        raise ConfigError(f"bench: none of the artifacts can run on {', '.join(cfg.runtimes)}: " + "; ".join(skipped))
    for s in skipped:
        log.warning("skipped %s: not loadable by the chosen runtimes", s)
    input_id = hashlib.sha256(json.dumps(sorted({t.artifact_id for t in targets})).encode()).hexdigest()[:16]

    from compress.evaluate import EvalConfig, prepare_eval
    from compress.models import load_tokenizer

    tokenizer = load_tokenizer(reference)
    ecfg = EvalConfig(data=cfg.data, window=cfg.window, stride=cfg.window, max_tokens=cfg.max_tokens,
                      tasks=cfg.tasks, mc_limit=cfg.mc_limit, threads=profile.threads)
    plan = prepare_eval(tokenizer, ecfg)  # bad data or task names fail before any weights load
    rows = {(t.label, r): _base_row(t, r, requested, profile, thread_note) for t, r in pairs}
    meta: dict[str, Any] = {"reference": reference, "profile": requested.__dict__, "threads_used": profile.threads,
                            "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "skipped": skipped}
    with steps("bench", 3) as step:
        if cfg.accuracy:
            step(f"accuracy: {len(pairs)} runs against {reference} on {plan.data}")
            meta.update(_accuracy(cfg, reference, pairs, plan, tokenizer, profile, rows))
        if cfg.latency:
            step(f"latency: {len(pairs)} subprocesses")
            prompt = _prompt_ids(tokenizer, cfg)
            depth_prompts = {d: _prompt_ids(tokenizer, cfg, depth=d) for d in cfg.depths if d > 0}
            bw = None
            if cfg.roofline:
                from .roofline import bandwidth_gb_s

                # measured in this run, beside the rows it bounds: a figure cached from another moment
                # (a busier or quieter machine) let rows read 121-179% of "roofline"
                bw = bandwidth_gb_s(profile.threads, cache=False)
                meta["bandwidth_gb_s"] = bw
                meta["load_average_bandwidth"] = os.getloadavg()
            for t, r in pairs:
                rows[(t.label, r)].update(_latency(cfg, t, r, profile, prompt, bw, depth_prompts))
        step("writing the run")
        for (label, r), row in rows.items():
            measured = row.pop("fits_memory_enforced", None)
            row.update(verdicts(requested, row["file_mb"], row.get("peak_rss_mb")))
            if measured is not None:  # ran (or died) under the enforced budget: that is the verdict
                row["fits_memory"] = measured
        meta["load_average_end"] = os.getloadavg()
        with ArtifactWriter(out_dir, stage=STAGE, config=cfg, input_id=input_id, force=force, inputs=inputs) as art:
            with open(art.path / ROWS, "w") as fh:
                for row in rows.values():
                    fh.write(json.dumps(row, default=_json) + "\n")
            art.report.update(meta)
    return out_dir


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a bench run (checks the manifest first: a half-written run is refused)."""
    from compress.manifest import read_manifest

    m = read_manifest(run_dir)
    if m.stage != STAGE:
        raise errors.ArtifactError(f"{run_dir}: a {m.stage!r} artifact, not a bench run")
    return [json.loads(line) for line in (Path(run_dir) / ROWS).read_text().splitlines() if line.strip()]


def _ref_label(reference: str) -> str:
    return Path(reference).name or reference


def _base_row(t: Target, runtime: str, requested, profile, note: str) -> dict[str, Any]:
    row = {"label": t.label, "artifact": t.spec, "artifact_id": t.artifact_id, "stage": t.stage,
           "runtime": runtime, "profile": requested.name, "threads_requested": requested.threads,
           "threads": profile.threads, "note": note, "file_bytes": t.file_bytes,
           "file_mb": round(t.file_bytes / 2**20, 2)}
    if runtime == "onnxruntime":
        import onnxruntime

        from runtimes.onnx_runtime import XNNPACK, execution_providers, provider_name

        # the provider the runtime will choose; the accuracy and latency phases overwrite it with the
        # one their sessions actually got (an XNNPACK session that fails falls back to the CPU)
        row["execution_provider"] = provider_name(execution_providers(profile.threads)[0])
        row["xnnpack_available"] = XNNPACK in onnxruntime.get_available_providers()
    return row


def _accuracy(cfg, reference, pairs, plan, tokenizer, profile, rows) -> dict[str, Any]:
    from runtimes import get_runtime

    from compress.evaluate import StoredLogits
    from compress.memory import release_memory

    from .accuracy import score_mc, score_text
    from .worker import load_runtime

    # One model in memory at a time: the reference's logits go to an unnamed temporary file once per
    # window, then each runtime is loaded, scored against them and freed. Loading the reference and
    # every artifact together held them all at once (3.3 GB for the default recipe's four exports).
    ref = get_runtime("pytorch")
    ref.load(reference, profile)
    ref_id = ref.loaded.model_id
    stored = StoredLogits.of(ref, plan.windows)
    n_ctx = max(cfg.window, _longest_mc(tokenizer, plan)) + 8
    ref_text = score_text(stored, {}, plan)[None]
    ref_ppl = ref_text["perplexity"]
    is_ref = [r == "pytorch" and t.spec == reference for t, r in pairs]
    if not any(is_ref):
        ref = None  # no row of its own: the stored logits are all the rest needs
        release_memory()
    try:
        for i in sorted(range(len(pairs)), key=lambda i: not is_ref[i]):  # the reference's row first
            t, r = pairs[i]
            # the reference's own row reuses the loaded reference (score_text then skips the second pass)
            rt = ref if is_ref[i] else load_runtime(r, t.loaders[r], profile, n_ctx=n_ctx)
            key = (t.label, r)
            text = score_text(stored, {key: stored if is_ref[i] else rt}, plan)[key]
            row = rows[key]
            row.update(runtime_version=rt.version(), **text, perplexity_ratio=text["perplexity"] / ref_ppl)
            if getattr(rt, "provider", None):
                row["execution_provider"] = rt.provider
            row["mc"] = score_mc(rt, tokenizer, plan, cfg.mc_limit) if plan.tasks else {}
            row["mc_mean"] = sum(row["mc"].values()) / len(row["mc"]) if row["mc"] else None
            del rt
            ref = None  # its row, when it has one, came first
            release_memory()
    finally:
        stored.close()
    return {"reference_id": ref_id, "reference_perplexity": ref_ppl, "tokens": ref_text["tokens"],
            "windows": len(plan.windows), "data": plan.data, "bos": plan.bos,
            "mc_examples": {task.name: min(cfg.mc_limit or len(task.examples), len(task.examples)) for task in plan.tasks}}


def _longest_mc(tokenizer, plan) -> int:
    """Tokens in the longest multiple-choice sequence (a context-bound runtime must hold it)."""
    longest = 0
    for task in plan.tasks:
        for ex in task.examples:
            for choice in ex.choices:
                longest = max(longest, len(tokenizer(ex.prompt + choice).input_ids) + 1)
    return longest


def _prompt_ids(tokenizer, cfg: BenchConfig, depth: int = 0) -> list[int]:
    """The fixed prompt: the first ``depth + prompt_tokens`` tokens of the text (BOS first where the model
    uses it); at depth 0 the prompt alone."""
    from compress.data import load_text, tokenize_text, uses_bos

    n = depth + cfg.prompt_tokens
    text = load_text(cfg.data).text
    bos = [tokenizer.bos_token_id] if uses_bos(tokenizer) else []
    ids = bos + tokenize_text(tokenizer, text[: n * 16], n - len(bos))
    if len(ids) < n:
        raise errors.DataError(f"{cfg.data}: too short for a {n}-token prompt")
    return ids


def _latency(cfg, t: Target, runtime: str, profile, prompt: list[int], bw: float | None,
             depth_prompts: dict[int, list[int]] | None = None) -> dict[str, Any]:
    spec = {"runtime": runtime, "path": t.loaders[runtime], "profile": profile.__dict__, "prompt_ids": prompt,
            "new_tokens": cfg.new_tokens, "warmup": cfg.warmup, "repetitions": cfg.repetitions,
            "depth_ids": {str(d): ids for d, ids in (depth_prompts or {}).items() if d > 0}}
    from .enforce import Limits

    limits = Limits.for_profile(profile)
    res = run_worker(spec, limits=limits)
    enforced = {"memory_enforcement": res["enforcement"]["mechanism"], "cores_pinned": res["enforcement"]["cores"]}
    if limits.memory_mb is not None:
        enforced["fits_memory_enforced"] = "over_budget" not in res
    if "over_budget" in res:
        log.warning("%s on %s: %s", runtime, t.label, res["over_budget"])
        return {**enforced, "memory_verdict": res["over_budget"]}
    runs = res["runs"]
    out: dict[str, Any] = {"runtime_version": res["runtime_version"], "load_s": res["load_s"],
                           "reps": len(runs), "warmup": cfg.warmup, "prompt_tokens": len(prompt),
                           "new_tokens": runs[0]["new_tokens"], "peak_rss_mb": round(res["peak_rss_mb"], 1),
                           "rss_start_mb": round(res["rss_start_mb"], 1)}
    # resident memory after loading and after generating, split anonymous / file-backed (a mapped GGUF
    # is file pages, which a phone can drop and re-read; heap and KV cache are not)
    for when in ("loaded", "generated"):
        mem = res.get("memory", {}).get(when, {})
        for part in ("anon", "file"):
            if part in mem:
                out[f"rss_{part}_{when}_mb"] = round(mem[part], 1)
    if "rss_loaded_mb" in res:
        out["peak_rss_loaded_mb"] = round(res["rss_loaded_mb"], 1)
    out.update(enforced)
    if res.get("execution_provider"):
        out["execution_provider"] = res["execution_provider"]
    for k in ("ttft_s", "prefill_tok_s", "decode_tok_s"):
        vals = [r[k] for r in runs]
        out[k], out[k + "_min"], out[k + "_max"] = statistics.median(vals), min(vals), max(vals)
    for d, druns in res.get("depth_runs", {}).items():
        for k in ("ttft_s", "prefill_tok_s", "decode_tok_s"):
            vals = [r[k] for r in druns]
            out[f"{k}@{d}"] = statistics.median(vals)
            out[f"{k}@{d}_min"], out[f"{k}@{d}_max"] = min(vals), max(vals)
    b = res["bytes_per_token"]
    out.update(bytes_per_token=b["total"], weight_bytes_per_token=b["weights"], kv_bytes_per_token=b["kv"])
    if bw:
        out["bandwidth_gb_s"] = bw
        out["roofline_tok_s"] = bw * 1e9 / b["total"]
        fraction = out["decode_tok_s"] / out["roofline_tok_s"]
        if fraction > 1.0:
            # no runtime reads memory faster than the read kernel: above 1 the bandwidth or the byte count
            # is wrong (a busy machine during the bandwidth run), so the fraction is refused, not shown
            log.warning("%s on %s decodes at %.0f%% of the measured bandwidth bound: refused as a measurement "
                        "error", runtime, t.label, 100 * fraction)
            out["roofline_fraction"] = None
            out["roofline_refused"] = f"{fraction:.2f} of the bound: measurement error"
        else:
            out["roofline_fraction"] = fraction
    return out


def run_worker(spec: dict[str, Any], timeout: float = 1800, limits=None) -> dict[str, Any]:
    """Run :mod:`.worker` on ``spec`` in a fresh interpreter; typed errors come back as themselves.

    With ``limits`` (:class:`.enforce.Limits`) the worker is pinned to the profile's cores and held to its
    memory budget by the operating system; a worker the budget kills comes back as ``{"over_budget": why}``,
    the way the artifact would fail on the device."""
    from .enforce import Limits

    limits = limits or Limits(None, (), [])
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp, limits.applied() as child:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "COMPRESS_PROGRESS": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        proc = subprocess.run([sys.executable, "-m", "compress.harness.worker", str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=child.enter)
        res = json.loads(out_path.read_text()) if out_path.is_file() else None
        why = child.verdict(proc.returncode, (proc.stderr or "") + json.dumps(res or {}))
        enforcement = {"mechanism": child.mechanism, "limit_mb": child.limit_mb, "cores": list(child.cores)}
    if why is not None:
        return {"over_budget": why, "enforcement": enforcement}
    if res is None:
        raise RuntimeError(f"bench worker for {spec['runtime']} on {spec['path']} died (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    if "error" in res:
        cls = getattr(errors, res["error_type"], None)
        if isinstance(cls, type) and issubclass(cls, CompressError):
            raise cls(res["error"])
        raise RuntimeError(f"bench worker for {spec['runtime']} on {spec['path']} failed: {res['traceback']}")
    res["enforcement"] = enforcement
    return res


def _json(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
