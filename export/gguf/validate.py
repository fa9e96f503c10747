"""Every GGUF proves itself: llama.cpp runs it on fixed token ids next to the PyTorch model of the
same artifact, and the export is refused when they disagree beyond the tolerance of what the file carries
(:func:`carried_tolerance`: an exact carry of our integers is held to Q8_0's whatever its block type; a
type's own looser tolerance only comes with a rounding the file really does, never to hide one). Before
that, :func:`check_exact` reads every exactly carried tensor back with gguf-py and compares it with the
artifact's dequantized weight, bounded by float16 rounding of the block offsets alone.

Metrics over all positions of the check ids (the start of the bundled evaluation text, BOS first
when the tokenizer uses it): mean KL(PyTorch || llama.cpp), top-1 agreement, max |logit difference|,
and both perplexities; once against the artifact (the type's tolerance: what quantization costs), once
against PyTorch running the file's own weights read back (a tolerance for every type: whether the file
is built right, which a 4-bit type's quality budget could otherwise hide). The tokenizer is checked too: llama.cpp's tokenization of a probe text
(digits, contractions, accents, emoji, runs of spaces) must equal the model's own, or a file that
scores well on ids could still read user text differently.

Torch is imported here, not in the writer: this is the PyTorch side of the comparison.

    >>> report = validate_gguf(path, src, plan, tolerance=Tolerance(0.995, 1e-4), check_tokens=128)
    >>> report["top1_agreement"], report["file_weights_in_pytorch"]["kl_mean"]
    (1.0, 8.4e-07)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ExportMismatchError, optional_import
from compress.logits import compare, perplexity
from compress.memory import release_memory
from runtimes.quiet import captured_output

from . import blocks
from .arch import rope_rows
from .config import FIDELITY, TOLERANCES, GGUFConfig, Tolerance, is_kquant
from .plan import TensorPlan
from .source import ExportSource

log = logging.getLogger(__name__)

PROBE = ("It's 1851: the whale—\"Moby Dick\"—isn't 42.5 m long,  they'd said; naïve café, 東京, 😀!\n\n"
         "    CHAPTER 135.   The Chase.—Third Day.\tx=3*(7+2) "
         # other scripts, code, digit runs and whitespace runs: where pre-tokenizers (gpt-2, llama-bpe, qwen2,
         # SentencePiece) differ while agreeing on plain English
         "Größe über Москва, 東京は大きい。 مرحبا 12345 + 9876543210 = 0.5e-3\n"
         "def f(x):\n\treturn x**2  # 1,000,000\n\n\n   \t  \u00a0end  ")


# Rounding a tensor can undergo in the file, finest first. Each type's tolerance was set for a file in which
# every matrix is rounded that way, so a file whose matrices are rounded at most as coarsely as the coarsest
# one here is bounded by that one's tolerance. "exact" is a quantized layer carried exactly: only llama.cpp's
# int8 activations (config.EXACT_TOLERANCE), which every block type shares, and Q8_0 adds an 8-bit weight grid.
_COARSENESS = ("F32", "F16", "BF16", "exact", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0")
_EXACT_ROWS = 8192  # rows dequantized at a time by the exactness check (Gemma3's 262k-row table)


def carried_tolerance(plan: list[TensorPlan], cfg: GGUFConfig, qtype: str) -> tuple[Tolerance, str]:
    """The tolerance of what the file carries, against the artifact's own weights, and the reason.

    Never loosened by tensors that were carried exactly: a Q4_0 block that holds our integers is held to
    the exact carry's tolerance, not to Q4_0's. Only a rounding the file really does (float tensors rounded
    to a block type the user asked for, or calibrated integers re-rounded with ``requantize``) brings in
    that type's own tolerance; ``requantize`` is the only way calibrated integers reach one."""
    if is_kquant(qtype):
        reround = any(t.how == "requantized" for t in plan)
        return cfg.tolerance(qtype), (f"{qtype}: llama.cpp's quantizer " +
                                      ("re-rounded the calibrated integers (--requantize)" if reround
                                       else "rounded the float weights"))
    steps: dict[str, list[str]] = {}
    for t in plan:
        if len(t.shape) != 2:
            continue
        key = "exact" if t.how == "exact" else t.qtype.name
        steps.setdefault(key, []).append(t.how)
    if not steps:
        return cfg.tolerance("F32"), "F32: no matrices"
    coarsest = max(steps, key=_COARSENESS.index)
    hows = sorted(set(steps[coarsest]))
    if coarsest == "exact":
        tol = cfg.tolerance(exact=True)
        return tol, ("exact carry: every quantized layer holds the artifact's integers; llama.cpp's int8 "
                     "activations are all that separate them (Q8_0's tolerance)")
    tol = cfg.tolerance(coarsest) if coarsest in TOLERANCES else cfg.tolerance()
    what = {"requantized": "calibrated integers re-rounded (--requantize)", "quantized": "float tensors rounded",
            "float": "float tensors", "dequantized": "quantized layers as floats", "fallback": "fallback rows"}
    return tol, f"{coarsest}: {', '.join(what.get(h, h) for h in hows)}"


def check_exact(path: Path, plan: list[TensorPlan], src: ExportSource) -> dict[str, Any]:
    """Every exactly carried tensor, dequantized from the written blocks by gguf-py, against the artifact's
    own dequantized weight: equal, up to the bound :func:`blocks.error_bound` derives from the float16
    rounding of a Q4_1/Q5_1 offset (zero for every other type). F32 copies of quantized layers are held to
    zero as well. Raises ExportMismatchError naming the tensor; torch-free."""
    from gguf import GGUFReader, GGMLQuantizationType as Q
    from gguf.quants import dequantize

    todo = [p for p in plan if p.how == "exact" or (p.how == "dequantized" and p.qtype == Q.F32)]
    tensors = {t.name: t for t in GGUFReader(path).tensors} if todo else {}
    errors: dict[str, float] = {}
    worst_ratio, bit_exact = 0.0, 0
    for p in todo:
        qw = src.weight(p.hf_name)
        if p.rope_heads:
            qw = qw.take_rows(rope_rows(p.shape[0], p.rope_heads))
        rt = tensors[p.gguf_name]
        raw = np.asarray(rt.data).reshape(p.shape[0], -1)
        err_max = 0.0
        for a in range(0, p.shape[0], _EXACT_ROWS):
            rows = np.arange(a, min(a + _EXACT_ROWS, p.shape[0]))
            part = qw.take_rows(rows)
            got = np.asarray(dequantize(raw[rows], rt.tensor_type), dtype=np.float64).reshape(part.shape)
            want = part.dequantize()
            err = np.abs(got - want)
            bound = np.repeat(blocks.error_bound(part, p.qtype), part.group_size, axis=1)
            over = err > bound
            if over.any():
                o, i = (int(x[0]) for x in np.nonzero(over))
                raise ExportMismatchError(
                    f"{path.name}: {p.gguf_name} ({p.qtype.name}, carrying {p.source} {p.hf_name}) dequantizes to "
                    f"{got[o, i]:.8g} at row {a + o}, column {i}, where the artifact has {want[o, i]:.8g}: off by "
                    f"{err[o, i]:.3g}, beyond "
                    f"the {bound[o, i]:.3g} that float16 rounding of the block's scale and offset allows")
            err_max = max(err_max, float(err.max(initial=0.0)))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(bound > 0, err / bound, 0.0)
            worst_ratio = max(worst_ratio, float(ratio.max(initial=0.0)))
        errors[p.gguf_name] = err_max
        bit_exact += err_max == 0.0
    return {"checked": len(todo), "bit_exact": bit_exact, "max_abs_err": max(errors.values(), default=0.0),
            "max_err_over_bound": worst_ratio, "tensors": errors}


def reference_model(src: ExportSource) -> tuple[Any, Any, str]:
    """(PyTorch model, tokenizer, how it was obtained) for the artifact being exported."""
    from compress import kinds, models

    if src.quantization is not None:
        if kinds.pytorch_loader(src.stage) is None:
            return _dequantized_reference(src) + ("dequantized by the export (no quantize loader installed)",)
    lm = models.load_model(str(src.folder), verify=False)
    return lm.model, lm.tokenizer, f"compress.models.load_model ({src.stage or 'model folder'})"


def _dequantized_reference(src: ExportSource) -> tuple[Any, Any]:
    """The artifact's dequantized weights in a transformers model built from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(src.folder))
    # built on CPU, not on the meta device: non-persistent buffers (rotary frequencies, Gemma's
    # embedding scale) are not in the state dict and would stay empty
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    names = set(src.logical_names())
    targets = model.state_dict(keep_vars=True)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in targets if k not in names and not (tied and k == "lm_head.weight")]
    unexpected = [n for n in src.logical_names() if n not in targets]
    if missing or unexpected:
        raise ExportMismatchError(f"{src.folder}: cannot rebuild the PyTorch reference "
                                  f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    # one copy of the model: each tensor is dequantized and copied in on its own, not gathered into a
    # second full state dict first (in the model's order, as load_state_dict copies)
    with torch.no_grad():
        for name, target in targets.items():
            if name not in names:
                continue
            w = src.weight(name)
            w = np.ascontiguousarray(w if isinstance(w, np.ndarray) else w.dequantize())
            if tuple(w.shape) != tuple(target.shape):
                raise ExportMismatchError(f"{src.folder}: {name} is {list(w.shape)} in the artifact, "
                                          f"{list(target.shape)} in the model its config describes")
            target.copy_(torch.from_numpy(w))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(src.folder))


def validate_gguf(path: Path, src: ExportSource, plan: list[TensorPlan], *, tolerance: Tolerance,
                  check_tokens: int, threads: int = 2, tokenizer_must_match: bool = True) -> dict[str, Any]:
    """Compare llama.cpp on ``path`` with PyTorch on ``src``; raise ExportMismatchError beyond tolerance.

    Two comparisons on the same ids. Against the artifact (``tolerance``, per type): what the user
    gets. Against PyTorch running the file's own weights, read back and dequantized (``FIDELITY``
    for every type): whether the file is built right. The second one cannot hide a wrong rope base or
    norm offset inside a 4-bit type's quality budget."""
    import torch

    from compress.data import check_ids
    from compress.gguf_import import llamacpp_logits, torch_logits

    model, tok, how = reference_model(src)
    torch.set_num_threads(threads)
    ids = check_ids(tok, check_tokens)
    t = torch_logits(model, ids)
    # One model in memory at a time: both PyTorch runs first (the artifact's weights, then the file's
    # put into the same model tensor by tensor), then the model is freed before llama.cpp loads the file.
    load_gguf_weights(model, path, plan)
    g = torch_logits(model, ids)
    del model
    release_memory()
    with captured_output() as chatter:
        try:
            ll = llamacpp_logits(path, ids, threads=threads)
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            ll = e
    if isinstance(ll, ValueError):
        raise ExportMismatchError(f"{path.name}: llama.cpp cannot load the exported file ({ll}; "
                                  f"{_last_error(chatter())})")
    if ll.shape != t.shape:
        raise ExportMismatchError(f"{path.name}: llama.cpp returns logits of shape {list(ll.shape)}, "
                                  f"PyTorch {list(t.shape)}")
    report = compare_logits(t, ll, ids)
    report.update(reference=how, check_tokens=len(ids), min_top1=tolerance.min_top1, max_kl=tolerance.max_kl)
    fidelity = compare_logits(g, ll, ids)
    fidelity.update(min_top1=FIDELITY.min_top1, max_kl=FIDELITY.max_kl)
    report["file_weights_in_pytorch"] = fidelity
    report["weights_only"] = {k: v for k, v in compare_logits(t, g, ids).items()
                              if k in ("top1_agreement", "kl_mean", "torch_perplexity", "llamacpp_perplexity")}
    report["weights_only"]["file_weights_perplexity"] = report["weights_only"].pop("llamacpp_perplexity")
    report.update(tokenizer_check(path, tok))
    _judge(path, fidelity, FIDELITY, tok, ids, g, ll,
           what="PyTorch running the file's own weights (the file is built wrongly, not just quantized)")
    _judge(path, report, tolerance, tok, ids, t, ll, what="PyTorch")
    if not report["tokenizer_agreement"]:
        msg = (f"{path.name}: llama.cpp tokenizes the probe text differently from the model's tokenizer "
               f"from token {report['tokenizer_first_difference']}")
        if tokenizer_must_match:
            raise ExportMismatchError(msg)
        log.warning("%s (tokenizer copied from the source GGUF, kept as is)", msg)
    log.info("validated %s: top-1 %.2f%%, KL %.2e, max |dlogit| %.3g; vs its own weights in PyTorch: KL %.2e",
             path.name, 100 * report["top1_agreement"], report["kl_mean"], report["max_abs_logit_diff"],
             fidelity["kl_mean"])
    return report


def load_gguf_weights(model, path: Path, plan: list[TensorPlan]) -> None:
    """Put the GGUF's tensors, dequantized by gguf-py and with llama.cpp's conventions undone (rope
    row order, Gemma's +1, folded scales), into the PyTorch model in place."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    targets = model.state_dict(keep_vars=True)
    unexpected = [p.hf_name for p in plan if p.hf_name not in targets and p.how != "generated"]
    if unexpected:
        raise ExportMismatchError(f"{path.name}: tensors {unexpected[:3]} have no place in the PyTorch model")
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    by_name = {p.hf_name: p for p in plan}
    # One tensor at a time, not a second state dict of the whole model; in the model's own order, as
    # load_state_dict copies, so a tied matrix ends up holding the same one of its two GGUF tensors.
    with torch.no_grad():
        for name, target in targets.items():
            p = by_name.get(name)
            if p is None:
                continue
            if tuple(target.shape) != tuple(p.shape):
                raise ExportMismatchError(f"{path.name}: {p.gguf_name} is {list(p.shape)}, the PyTorch model's "
                                          f"{name} {list(target.shape)}")
            rt = tensors[p.gguf_name]
            data = np.asarray(dequantize(np.asarray(rt.data), rt.tensor_type), dtype=np.float32).reshape(p.shape)
            if not data.flags.writeable:  # a float tensor comes back as a view of the read-only file map
                data = data.copy()
            if p.scale != 1.0:
                data = data / np.float32(p.scale)
            if p.transform == "norm_plus_one":
                data = data - np.float32(1.0)
            if p.rope_heads:
                data = data[np.argsort(rope_rows(p.shape[0], p.rope_heads))]
            target.copy_(torch.from_numpy(np.ascontiguousarray(data)))


def compare_logits(t: np.ndarray, ll: np.ndarray, ids: list[int]) -> dict[str, Any]:
    """PyTorch's logits ``t`` against llama.cpp's ``ll`` on ``ids`` (:func:`compress.logits.compare`, float64)."""
    c = compare(t, ll)
    return {
        "top1_agreement": c.top1_agreement,
        "kl_mean": c.kl_mean,
        "kl_max": c.kl_max,
        "worst_position": c.worst_kl_position,
        "max_abs_logit_diff": c.max_abs,
        "torch_perplexity": perplexity(c.ref_logp, ids),
        "llamacpp_perplexity": perplexity(c.got_logp, ids),
    }


def tokenizer_check(path: Path, tok) -> dict[str, Any]:
    Llama = optional_import("llama_cpp", "GGUF validation needs llama.cpp", "llama-cpp-python").Llama
    from compress.data import load_text

    text = PROBE + load_text("moby-dick").text[:2000]
    ours = tok(text, add_special_tokens=False).input_ids
    with captured_output() as chatter:
        try:
            vocab = Llama(model_path=str(path), vocab_only=True, n_ctx=16, verbose=False)
        except ValueError as e:
            vocab = e
    if isinstance(vocab, ValueError):
        raise ExportMismatchError(f"{path.name}: llama.cpp cannot load the exported vocabulary ({vocab}; "
                                  f"{_last_error(chatter())})")
    try:
        theirs = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    finally:
        vocab.close()
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
    return {"tokenizer_agreement": first is None, "tokenizer_first_difference": first,
            "tokenizer_probe_tokens": len(ours)}


def _judge(path: Path, r: dict[str, Any], tol: Tolerance, tok, ids: list[int], t: np.ndarray,
           ll: np.ndarray, *, what: str) -> None:
    fails = []
    if r["top1_agreement"] < tol.min_top1:
        fails.append(f"top-1 agreement {r['top1_agreement']:.1%} < {tol.min_top1:.1%}")
    if not r["kl_mean"] <= tol.max_kl:  # also catches NaN
        fails.append(f"mean KL {r['kl_mean']:.3g} > {tol.max_kl:.3g}")
    if not fails:
        return
    p = r["worst_position"]
    word = lambda i: repr(tok.decode([int(i)]))  # noqa: E731
    raise ExportMismatchError(
        f"{path.name} disagrees with {what} on {len(ids)} check tokens: {'; '.join(fails)}. Worst output: "
        f"position {p} (after {word(ids[p])}), KL {r['kl_max']:.3g}, PyTorch predicts {word(t[p].argmax())}, "
        f"llama.cpp {word(ll[p].argmax())}; max |logit diff| {r['max_abs_logit_diff']:.3g}")


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
    return lines[-1] if lines else "no message from llama.cpp"
