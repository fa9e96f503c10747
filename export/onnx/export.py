"""``export_onnx``: an artifact in, a validated onnxruntime decoder (with KV cache) out.

    path = export_onnx("out/smollm2-int4-gptq", OnnxConfig(precision="int4"), "out/smollm2-onnx-int4")
    # out/smollm2-onnx-int4/model.onnx (+ model.onnx.data, the weights, :mod:`.files`), tokenizer files,
    # config.json, genai_config.json, manifest.json (stage export-onnx)

Steps: load the artifact (the same PyTorch model every other stage sees), read the architecture row and
the real shapes, decide each weight's form (:mod:`.plan`), build the graph (:mod:`.decoder`), let
onnxruntime's tools quantize what the artifact left in float (:mod:`.tools`), save (the weights page-aligned
in external data, which onnxruntime memory-maps: :mod:`.files`), run it in
onnxruntime against PyTorch (:mod:`.validate`), and only then let the directory appear under its final
name. Any failure on the way leaves nothing that looks finished.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import onnx

from compress.errors import ArtifactError, CompressError
from compress.memory import release_memory
from compress.manifest import MANIFEST, ArtifactWriter, precheck_output, read_manifest, reusable, reuse_or_check
from compress.progress import steps
from compress.quantize.format import QUANT_JSON, read_quantization_json

from .arch import model_dims, rope_tables, spec_for
from .config import OnnxConfig
from .decoder import build_decoder
from .files import MODEL_FILE, model_bytes, remove_model, save_model
from .genai import write_genai_config
from .kv import declare_kv
from .plan import check_carry, make_plan
from .tools import quantize_int8, rtn_nbits, to_ort_format
from .levels import (LevelChoice, Measure, choose_levels, fixed_levels, initial_level, nbits_nodes, set_levels,
                     slow_float_nodes)
from .scales import SAFE_MAX, SCALED_OPS, activation_ranges, half_scale_nodes, half_scales, node_bits
from .validate import check_ids, problems, reference_logits, score, validate_onnx
from .weights import open_weights

log = logging.getLogger(__name__)

STAGE = "export-onnx"


def export_onnx(artifact: str | Path, cfg: OnnxConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``artifact`` as an ONNX decoder into the artifact directory ``out_dir``, prove it in
    onnxruntime, and return the model.onnx path. An identical earlier export (same content id) is reused.

    >>> export_onnx("smollm2-135m", OnnxConfig(precision="fp32"), "out/smollm2-onnx")
    PosixPath('out/smollm2-onnx/model.onnx')
    """
    from runtimes.onnx_runtime import OnnxDecoder, make_session

    out_dir = Path(out_dir).absolute()
    precheck_output(out_dir, force=force, inputs=[artifact])  # before minutes of loading
    _check_carry_early(artifact, cfg)
    if reusable(out_dir, stage=STAGE, config=cfg, input_id=_input_id(artifact), force=force):
        return out_dir / MODEL_FILE
    with steps(f"export ONNX {cfg.precision}", 5) as step:
        step("loading the artifact")
        lm = _load(artifact)
        if reuse_or_check(out_dir, stage=STAGE, config=cfg, input_id=lm.model_id, force=force, inputs=[artifact]):
            return out_dir / MODEL_FILE
        spec = spec_for(lm.model.config)
        dims = model_dims(lm.model, spec)
        src = open_weights(lm)
        plan = make_plan(src, dims, cfg)
        length = min(cfg.max_length or dims.max_positions, dims.max_positions)
        with ArtifactWriter(out_dir, stage=STAGE, config=cfg, input_id=lm.model_id, force=force,
                            inputs=[artifact]) as art:
            # PyTorch's side of the check comes first: its model is freed once its weights are in the graph
            # the same pass measures what float16 activations must hold (scale_type auto)
            with activation_ranges(lm.model, cfg.scale_type == "auto" and plan.integers != "none") as ranges:
                reference = reference_logits(lm.model, lm.tokenizer, cfg.check_tokens)
            config, generation_config = lm.model.config, getattr(lm.model, "generation_config", None)
            step("building the graph")
            t0 = time.perf_counter()
            model, weight_map = build_decoder(src, spec, dims, plan, rope_tables(lm.model, dims, length), cfg, config)
            declare_kv(model, cfg.kv_dtype)  # the cache's type, and whether past and present may be one buffer
            scales = _half_scales(model, weight_map, plan, cfg, ranges)
            # one copy of the model: the PyTorch weights (and src's views of them) go before the graph is
            # serialized and onnxruntime loads it; kept, they stacked 540 MB on SmolLM2's export
            del src
            lm.model = None
            release_memory()
            target = art.path / MODEL_FILE
            if plan.post == "ort-nbits":
                nodes = sorted({weight_map[n]["node"] for n, c in plan.linears.items() if c.kind == "ort-nbits"})
                model = rtn_nbits(model, nodes, bits=4 if plan.precision == "int4" else 8, block_size=cfg.block_size,
                                  accuracy_level=initial_level(cfg))
            if plan.post == "dynamic":
                nodes = sorted({weight_map[n]["node"] for n, c in plan.linears.items() if c.kind == "dynamic"})
                staged = art.path / "float.onnx"
                save_model(model, staged)
                del model
                quantize_int8(staged, target, nodes)
                remove_model(staged)
                # quantize_dynamic writes every weight inside the graph: move them out as every export has them
                save_model(onnx.load(str(target)), target)
            else:
                save_model(model, target)
                del model
            export_s = time.perf_counter() - t0
            lm.tokenizer.save_pretrained(str(art.path))
            config.to_json_file(str(art.path / "config.json"))
            if generation_config is not None:
                generation_config.to_json_file(str(art.path / "generation_config.json"))
            step("checking against PyTorch")
            import onnxruntime

            ids = check_ids(lm.tokenizer, cfg.check_tokens)
            levels = _choose_levels(target, cfg, plan, ids, reference, length)
            tol = cfg.tolerance(plan.integers, int8_activations=levels.int8_activations)
            decoder = OnnxDecoder(make_session(target, threads=2), length)
            # as the runtime reads it from the saved file (after onnxruntime's quantizers had the graph)
            kv = {"dtype": cfg.kv_dtype, "share_buffer": decoder.shares_buffer}
            # the same folder runs in onnxruntime-genai's generator (and the apps that embed it)
            genai_file = write_genai_config(art.path, dims, config, generation_config, context_length=length,
                                            model_file=MODEL_FILE, share_buffer=kv["share_buffer"])
            figures = validate_onnx(decoder, None, lm.tokenizer, tol, check_tokens=cfg.check_tokens,
                                    where=f"{out_dir.name}/{MODEL_FILE}", reference=reference)
            del decoder
            figures["tolerance_basis"] = _basis(plan.integers, levels)
            report: dict[str, Any] = {
                "model_file": MODEL_FILE, "architecture": spec.name, "precision": plan.precision,
                "layers": len(dims.layers), "hidden": dims.hidden, "vocab": dims.vocab, "max_length": length,
                "plan": plan.summary(), "carried": plan.carried(), "accuracy_levels": levels.report(),
                "ops": _op_counts(target), "export_s": round(export_s, 2),
                "onnx_bytes": model_bytes(art.path), "validation": figures, "onnxruntime": onnxruntime.__version__,
                "genai_config": genai_file, "kv_cache": kv, "scales": scales, **_input_fields(artifact)}
            if cfg.ort_format:
                step("converting to .ort")
                ort_path = to_ort_format(target, art.path)
                report["ort_file"] = ort_path.name
                report["ort_bytes"] = ort_path.stat().st_size
                ort_decoder = OnnxDecoder(make_session(ort_path, threads=2))
                report["ort_validation"] = validate_onnx(
                    ort_decoder, None, lm.tokenizer, tol,
                    check_tokens=cfg.check_tokens, where=f"{out_dir.name}/{ort_path.name}", reference=reference)
                kv["ort_share_buffer"] = ort_decoder.shares_buffer  # whether the .ort kept the declaration
            art.report.update(report)
    return out_dir / MODEL_FILE


def _half_scales(model, weight_map: dict, plan, cfg: OnnxConfig, ranges: dict[str, float]) -> dict[str, Any]:
    """float16 scales (:mod:`.scales`) on the nodes holding the artifact's integers, as ``scale_type`` says."""
    nodes = {weight_map[n]["node"] for n, c in plan.linears.items() if c.kind == "nbits"}
    if plan.head.kind == "nbits":
        nodes.add("lm_head")
    if plan.embeddings.kind == "gbq":
        nodes.add("embed_tokens")
    if cfg.scale_type == "float32" or not nodes:
        return {"type": "float32" if nodes else "none", "float16_nodes": 0}
    kept: dict[str, float] = {}
    if cfg.scale_type == "auto":
        safe, kept = half_scale_nodes(model, weight_map, ranges)
        nodes &= safe
    done = half_scales(model, nodes)
    eight = sum(1 for n in model.graph.node if n.op_type in SCALED_OPS and n.name not in nodes and node_bits(n) == 8)
    if kept:
        log.info("export-onnx: %d node(s) keep float32 scales: their activations reached %s on the check tokens "
                 "(float16 safe to %g)", len(kept), ", ".join(f"{n} {v:.3g}" for n, v in sorted(kept.items())[:3]),
                 SAFE_MAX)
    return {"type": cfg.scale_type, "float16_nodes": done["float16"], "float32_8bit_nodes": eight,
            "float32_kept": {n: float(f"{v:.4g}") for n, v in sorted(kept.items())}}


def _check_carry_early(artifact: str | Path, cfg: OnnxConfig) -> None:
    """The refusal of a precision that would re-round the artifact's integers, from quantization.json
    alone: before minutes of loading (make_plan checks again on what was loaded)."""
    p = Path(str(artifact)).expanduser()
    if not (p / QUANT_JSON).is_file():
        return
    try:
        info = read_quantization_json(p)
    except CompressError:
        return  # the loader names what is wrong with it
    check_carry({n: int(m["bits"]) for n, m in info["layers"].items()}, cfg)


def _choose_levels(target: Path, cfg: OnnxConfig, plan, ids: list[int], reference, length: int) -> LevelChoice:
    """Every MatMulNBits node's accuracy_level: the fixed one, or (``auto``) measured against PyTorch at
    the tolerance of a file that computes with int8 activations, and written into ``target``."""
    from runtimes.onnx_runtime import OnnxDecoder, make_session

    if plan.post != "ort-nbits" and not any(c.kind == "nbits" for c in [plan.head, *plan.linears.values()]):
        return fixed_levels({}, initial_level(cfg))  # no MatMulNBits: don't read a float file back for nothing
    model = onnx.load(str(target), load_external_data=False)
    nodes = nbits_nodes(model)
    if cfg.fixed_level is not None or not nodes:
        return _warn_slow(model, fixed_levels(nodes, initial_level(cfg)))
    tol = cfg.tolerance(plan.integers, int8_activations=True)

    def measure(levels: dict[str, int], full: bool) -> Measure:
        set_levels(model, levels)
        save_model(model, target)
        decoder = OnnxDecoder(make_session(target, threads=2), length)
        figures = score(decoder, ids, reference, full=full)
        return Measure(all(not problems(r, tol) for r in figures.values()),
                       min(r["top1_agreement"] for r in figures.values()), max(r["kl"] for r in figures.values()))

    choice = choose_levels(nodes, measure)
    set_levels(model, choice.levels)
    save_model(model, target)
    return _warn_slow(model, choice)


_BASIS = {"artifact": "the artifact's own integers", "requantized": "integers re-rounded by --requantize",
          "artifact+head": "the artifact's integers plus an lm_head / table the export rounded to int8",
          "onnxruntime": "onnxruntime's round-to-nearest of a float model", "none": "float weights"}


def _basis(integers: str, levels: LevelChoice) -> str:
    """What the tolerance was chosen for, in words, for the manifest and the CLI."""
    n = len(levels.levels)
    fast = sum(1 for v in levels.levels.values() if v > 0)
    return _BASIS.get(integers, integers) + (f", int8 activations on {fast} of {n} MatMulNBits nodes" if n else "")


def _warn_slow(model: onnx.ModelProto, choice: LevelChoice) -> LevelChoice:
    choice.slow = slow_float_nodes(model, choice.levels)
    if choice.slow:
        log.warning("export-onnx: %d 8-bit MatMulNBits node(s) compute with float activations (%s): onnxruntime's "
                    "slow CPU path, tens of times slower than level 4", len(choice.slow), ", ".join(choice.slow[:3]))
    return choice


def _load(artifact: str | Path):
    """The artifact's PyTorch model; anything that is not a typed error becomes a one-line ArtifactError."""
    from compress.models import load_model, resolve_model

    try:
        given = resolve_model(artifact)
        if given.kind == "gguf":  # read through its cached fp32 import, as the GGUF export does
            from compress.fetch import import_gguf

            return load_model(import_gguf(given.path))
        return load_model(artifact)
    except CompressError:
        raise
    except Exception as e:  # a corrupt file surfaces as whatever its reader raises
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"{artifact}: cannot be loaded, corrupt artifact? ({type(e).__name__}: {first})") from None


def _input_id(artifact: str | Path) -> str | None:
    """The input id without loading weights, where a manifest gives it (for resuming)."""
    m = _input_manifest(artifact)
    return m.content_id if m else None


def _input_manifest(artifact: str | Path):
    """The manifest of the folder ``artifact`` names (a bundled model's cache folder), if it has one."""
    from compress.models import resolve_model

    try:
        src = resolve_model(artifact)
        if src.kind == "bundled":
            from compress.fetch import cached_folder

            folder = cached_folder(src.spec)
        elif src.kind == "hf_dir":
            folder = src.path
        elif src.kind == "gguf":
            from compress.fetch import imported_folder

            folder = imported_folder(src.path)
            if folder is None:
                return None
        else:
            return None
        return read_manifest(folder) if (folder / MANIFEST).is_file() else None
    except CompressError:
        return None


def _input_fields(artifact: str | Path) -> dict[str, Any]:
    """``input`` and ``input_stage`` for the report, as the GGUF export writes them: bench follows
    ``input`` back to the bundled model to pick its reference. The input id alone is not enough: it
    changes when a bundled model is fetched again. A path is recorded absolute so that a bench run
    from another directory still finds it; a bundled or hub name is kept as given."""
    spec = str(artifact)
    p = Path(spec).expanduser()
    m = _input_manifest(artifact)
    return {"input": str(p.absolute()) if p.exists() else spec, "input_stage": m.stage if m else None}


def _op_counts(path: Path) -> dict[str, int]:
    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node).most_common())
