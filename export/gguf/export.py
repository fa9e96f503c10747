"""``export_gguf``: an artifact in, a validated GGUF artifact out.

    path = export_gguf("smollm2-135m", GGUFConfig(qtype="Q4_K_M"), "out/smollm2-q4km")
    # out/smollm2-q4km/model.Q4_K_M.gguf, and manifest.json beside it with the validation figures

Steps: open the artifact (headers only), map its tensors (:mod:`.plan`), write the GGUF into the
ArtifactWriter's temporary directory (k-quants: F32 first, then llama.cpp's quantizer), read it back
with gguf-py, run it in llama.cpp against PyTorch, and only then let the directory appear under its
final name. Any failure on the way leaves nothing that looks finished.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, LlamaFileType

from compress.errors import ArtifactError
from runtimes.base import usable_threads
from compress.manifest import ArtifactWriter, read_manifest, reuse_or_check
from compress.progress import steps

from .arch import ArchSpec, Dims, spec_for
from .config import FLOAT_TYPES, GGUFConfig, is_kquant
from .hparams import arch_metadata, model_dims
from .imatrix import importance_matrix
from .kquant import check_kquant_rows, quantize_with_llama_cpp, row_widths
from .metadata import Metadata
from .plan import TensorPlan, build_plan, resolved_qtype, summarize
from .source import ExportSource, open_source
from .tokenizer import tokenizer_metadata
from .validate import carried_tolerance, check_exact, validate_gguf
from .writer import write_gguf

log = logging.getLogger(__name__)

STAGE = "export-gguf"
_FILE_TYPES = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16,
               "Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1,
               "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1, "Q4_0": LlamaFileType.MOSTLY_Q4_0}


def gguf_filename(qtype: str) -> str:
    """``model.Q4_0.gguf``: the file's type (with qtype auto, its dominant one: :func:`file_type`)."""
    return f"model.{qtype}.gguf"


def file_type(plan: list[TensorPlan], qtype: str) -> str:
    """The type that names the file: the one asked, or with ``auto`` the type of most matrices (ties: most
    bytes), as llama.cpp names a file by its dominant type when general.file_type is absent."""
    if qtype != "auto":
        return qtype
    count: dict[str, list[int]] = {}
    for t in plan:
        if len(t.shape) == 2:
            c = count.setdefault(t.qtype.name, [0, 0])
            c[0] += 1
            c[1] += t.nbytes
    return max(count, key=lambda k: tuple(count[k])) if count else "F16"


def export_gguf(artifact: str | Path, cfg: GGUFConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``artifact`` as a GGUF of ``cfg.qtype`` into the artifact directory ``out_dir`` and prove it
    in llama.cpp; returns the .gguf path. An identical earlier export (same content id) is reused.

    >>> export_gguf("smollm2-135m", GGUFConfig(qtype="Q8_0"), "out/q8")
    PosixPath('out/q8/model.Q8_0.gguf')
    """
    out_dir = Path(out_dir).absolute()
    threads = usable_threads(cfg.threads)  # a config file's threads: 100000 must not reach llama.cpp
    with steps(f"export {cfg.qtype} GGUF", 5 + is_kquant(cfg.qtype) + bool(cfg.imatrix())) as step:
        step("reading the artifact")
        src = open_source(artifact, qtype=cfg.qtype)  # a GGUF input as its own type: refused
        if reuse_or_check(out_dir, stage=STAGE, config=cfg, input_id=src.input_id, force=force,
                          inputs=[artifact]):  # before any work
            return out_dir / read_manifest(out_dir).report["gguf_file"]
        spec, dims, plan, metadata, tok_info = prepare(src, cfg)  # refuses a re-rounding before any work
        qtype = resolved_qtype(src, cfg)
        name = gguf_filename(file_type(plan, qtype))
        with ArtifactWriter(out_dir, stage=STAGE, config=cfg, input_id=src.input_id, force=force,
                            inputs=[artifact]) as art:
            target = art.path / name
            t0 = time.perf_counter()
            step(f"writing {target.name}")
            try:
                if is_kquant(qtype):
                    f32 = art.path / ".intermediate.F32.gguf"
                    write_gguf(f32, spec.gguf_arch, metadata, plan, src)
                    step(f"quantizing to {cfg.qtype} with llama.cpp")
                    emb = None if cfg.embeddings == "auto" else cfg.embeddings
                    imat = None
                    if cfg.imatrix():
                        step("importance matrix from calibration text")
                        names = {t.gguf_name for t in plan}
                        imat = {k: v for k, v in importance_matrix(src, spec, tokens=cfg.imatrix(),
                                                                   threads=threads).items() if k in names}
                    quantize_with_llama_cpp(f32, target, cfg.qtype, threads=threads, embedding_type=emb,
                                            imatrix=imat)
                    f32.unlink()
                else:
                    write_gguf(target, spec.gguf_arch, metadata, plan, src)
            except OSError as e:  # disk full, permissions: the writer removes the temporary directory
                raise ArtifactError(f"{out_dir}: writing {target.name} failed ({e.strerror or e}); "
                                    f"nothing was left under the final name") from e
            write_s = time.perf_counter() - t0
            step("reading it back")
            readback = check_readback(target, plan, metadata, exact_types=not is_kquant(qtype))
            step("checking the carried integers block by block")
            exactness = check_exact(target, plan, src)
            step("validating in llama.cpp against PyTorch")
            t1 = time.perf_counter()
            tol, basis = carried_tolerance(plan, cfg, qtype)
            validation = validate_gguf(target, src, plan, tolerance=tol, check_tokens=cfg.check_tokens,
                                       threads=threads, tokenizer_must_match=tok_info["tokenizer_source"]
                                       .startswith("built"))
            validation["tolerance_basis"] = basis
            art.report.update(_report(src, spec, dims, plan, metadata, tok_info, cfg, target, readback,
                                      validation, write_s, time.perf_counter() - t1, exactness))
    return out_dir / name


def prepare(src: ExportSource, cfg: GGUFConfig) -> tuple[ArchSpec, Dims, list[TensorPlan], Metadata, dict]:
    """Everything decided before writing (no weights read): also what ``--dry-run`` shows."""
    spec = spec_for(src.config)
    dims = model_dims(src, spec)
    plan = build_plan(src, spec, dims, cfg)
    qtype = resolved_qtype(src, cfg)
    if is_kquant(qtype):  # refused when no row holds a super-block: the widths the tensors really have
        check_kquant_rows(qtype, row_widths(dims.hidden, dims.n_head * dims.head_dim, dims.n_ff))
    md = Metadata()
    where = str(src.folder / "config.json")
    md.add("general.type", "model")
    md.add("general.name", str(src.config.get("_name_or_path") or src.folder.name), where=where)
    if not is_kquant(qtype):  # llama.cpp's quantizer writes its own
        ftype = file_type(plan, qtype)
        md.add("general.file_type", int(_FILE_TYPES[ftype]))
        if any(t.qtype.name not in FLOAT_TYPES for t in plan):
            md.add("general.quantization_version", 2)
    md.update(arch_metadata(spec, src.config, dims, where), where=where)
    entries, tok_info = tokenizer_metadata(src, dims.vocab)
    for key, value, vtype, sub in entries:
        md.add(key, value, vtype, sub, where=tok_info["tokenizer_source"])
    return spec, dims, plan, md, tok_info


def check_readback(path: Path, plan: list[TensorPlan], md: Metadata, *, exact_types: bool) -> dict[str, Any]:
    """Read the file back with gguf-py: the planned tensors (names, shapes, types) and metadata are there."""
    reader = GGUFReader(path)
    got = {t.name: t for t in reader.tensors}
    want = {t.gguf_name: t for t in plan}
    if set(got) != set(want):
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        raise ArtifactError(f"{path.name}: read back tensors differ from the plan (extra {extra[:3]}, "
                            f"missing {missing[:3]})")
    for name, t in want.items():
        shape = tuple(int(s) for s in reversed(got[name].shape.tolist()))
        if shape != t.shape or (exact_types and got[name].tensor_type != t.qtype):
            raise ArtifactError(f"{path.name}: tensor {name} reads back as {got[name].tensor_type.name} "
                                f"{list(shape)}, planned {t.qtype.name} {list(t.shape)}")
    for key in md:
        field = reader.fields.get(key)
        if field is None:
            raise ArtifactError(f"{path.name}: metadata {key} is missing when read back")
        if field.types[0] != GGUFValueType.ARRAY and field.contents() != md[key] \
                and not isinstance(md[key], float):
            raise ArtifactError(f"{path.name}: metadata {key} reads back as {field.contents()!r}, wrote {md[key]!r}")
    types: dict[str, int] = {}
    for t in got.values():
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"tensors": len(got), "metadata_keys": len(reader.fields), "types": dict(sorted(types.items()))}


def carry_notes(plan: list[TensorPlan], cfg: GGUFConfig, qtype: str) -> list[str]:
    """What the file did to the artifact's tensors, in sentences; a re-rounding first and in capitals."""
    notes = []
    requant = [t for t in plan if t.how == "requantized"]
    if requant:
        into = cfg.qtype if is_kquant(qtype) else ", ".join(sorted({t.qtype.name for t in requant}))
        notes.append(f"REQUANTIZED (--requantize): the calibrated integers of {len(requant)} layers were dequantized "
                     f"and rounded again to {into}; the file does not hold the artifact's weights, and it was "
                     f"validated at {into}'s tolerance")
    exact = [t for t in plan if t.how == "exact"]
    if exact:
        kinds = Counter(f"{t.source.split(' (')[0]} -> {t.qtype.name}" for t in exact)
        what = ", ".join(f"{n} {k}" for k, n in kinds.items())
        notes.append(f"{len(exact)} quantized layers carried exactly ({what})")
    deq = [t for t in plan if t.how == "dequantized"]
    if deq:
        notes.append(f"{len(deq)} quantized layers written as {deq[0].qtype.name} floats"
                     + (" (exact)" if deq[0].qtype.name == "F32" else " (the products rounded to it)"))
    quantized = [t for t in plan if t.how == "quantized"]
    if quantized:
        into = ", ".join(sorted({t.qtype.name for t in quantized}))
        notes.append(f"{len(quantized)} float tensors rounded to {into}")
    fallback = [t for t in plan if t.how == "fallback"]
    if fallback:
        notes.append(f"{len(fallback)} tensors have rows that are not whole 32-wide blocks and are stored F16")
    return notes


def tensor_table(plan: list[TensorPlan], path: Path, errors: dict[str, float]) -> list[dict[str, Any]]:
    """Per tensor: GGUF name, type as read back, how it was carried, from what, and for an exact carry the
    largest difference from the artifact's dequantized weight."""
    types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    rows = []
    for t in plan:
        row: dict[str, Any] = {"gguf": t.gguf_name, "hf": t.hf_name, "type": types.get(t.gguf_name, t.qtype.name),
                               "how": t.how, "from": t.source}
        if t.gguf_name in errors:
            row["max_abs_err"] = errors[t.gguf_name]
        rows.append(row)
    return rows


def _report(src: ExportSource, spec: ArchSpec, dims: Dims, plan: list[TensorPlan], md: Metadata, tok_info: dict,
            cfg: GGUFConfig, target: Path, readback: dict, validation: dict, write_s: float,
            validate_s: float, exactness: dict[str, Any]) -> dict[str, Any]:
    quant = src.quantized_layers()
    notes = src.notes() + carry_notes(plan, cfg, resolved_qtype(src, cfg))
    input_bytes = sum(p.stat().st_size for p in src.folder.glob("*.safetensors"))
    return {
        "gguf_file": target.name,
        "gguf_bytes": target.stat().st_size,
        # a path absolute (bench follows it back to the reference from any directory); a name as given
        "input": str(Path(src.spec).expanduser().absolute()) if Path(src.spec).expanduser().exists() else src.spec,
        "input_stage": src.stage,
        "input_weight_bytes": input_bytes,
        "architecture": spec.gguf_arch,
        "dims": vars(dims),
        "quantized_input_layers": len(quant),
        "imatrix_tokens": cfg.imatrix(),
        "plan": summarize(plan),
        "requantized": any(t.how == "requantized" for t in plan),
        "exactness": {k: v for k, v in exactness.items() if k != "tensors"},
        "tensors": tensor_table(plan, target, exactness["tensors"]),
        "metadata": md.summary(),
        "tokenizer": tok_info,
        "readback": readback,
        "validation": validation,
        "write_s": round(write_s, 2),
        "validate_s": round(validate_s, 2),
        "notes": notes,
    }
