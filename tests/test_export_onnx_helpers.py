"""Test models for the ONNX export: peaked tiny models, quantized artifacts in the documented layout,
and a structurally pruned student.

Random tiny models have flat next-token distributions, where top-1 agreement is decided by near-ties.
``peaked`` trains a tiny model for a second on the validation's own check ids, so it predicts them
with high confidence and the per-precision tolerances apply to it unchanged.

Shapes: onnxruntime's GroupQueryAttention needs head_dim % 16 == 0, so the tiny Llama here has
6 heads of 16 (hidden 96, 2 KV heads) and the tiny Gemma3 head_dim 32 (4 heads, 2 KV heads) with a
sliding window of 32 that the 64 check tokens cross.

``rtn_artifact`` writes the quantize stage's documented layout (manifest stage "quantize",
quantization.json, NAME.qweight / .scales / .zeros) with its own numpy RTN, independent of the quantize
stage's code; loading it goes through the stage's registered loader like any quantized artifact.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from compress.config import StageConfig, register_config
from compress.manifest import ArtifactWriter

_ROOT = Path(tempfile.mkdtemp(prefix="onnx-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

SHAPES = {"llama": {"num_attention_heads": 6, "num_key_value_heads": 2},
          "gemma3": {"head_dim": 32}}


@register_config("test-onnx-rtn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RTNConfig(StageConfig):
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    embeddings: bool = False


@functools.lru_cache(maxsize=None)
def peaked(arch: str = "llama", steps: int = 40, **overrides) -> Path:
    """A tiny model that has memorized the check ids (saved once per process)."""
    from tiny import build_model, build_tokenizer

    name = "-".join([arch, str(steps)] + [f"{k}{v}" for k, v in sorted(overrides.items())])
    path = _ROOT / f"peaked-{name}"
    model = build_model(arch, seed=0, **{**SHAPES[arch], **overrides})
    return memorize(model, build_tokenizer(add_bos=(arch == "gemma3")), path, steps)


def memorize(model, tok, path: Path, steps: int = 40) -> Path:
    """Train ``model`` on the validation's check ids for ``steps`` Adam steps and save it with ``tok``."""
    import torch

    from export.onnx.validate import check_ids

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would land in the CLI tests' captured stderr
    ids = torch.tensor([check_ids(tok, 64)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two busy ones
    try:
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rememorize(folder: Path, out: Path, steps: int = 30) -> Path:
    """A saved model (e.g. just pruned) trained again on the check ids, as a distilled student would be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return memorize(AutoModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder)),
                    out, steps)


def rtn(w: np.ndarray, bits: int, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """Round-to-nearest into the artifact layout (qweight, float16 scales, uint8 zeros if asymmetric)."""
    out, n = w.shape
    g = w.reshape(out, n // group, group).astype(np.float32)
    if symmetric:
        scale = (np.abs(g).max(-1) / (7 if bits == 4 else 127)).astype(np.float16)
        scale[scale == 0] = np.float16(1e-4)
        zero, lo, hi = (8, 0, 15) if bits == 4 else (0, -127, 127)
        q = np.clip(np.round(g / scale.astype(np.float32)[..., None]) + zero, lo, hi)
        zeros = None
    else:
        levels = 15 if bits == 4 else 255
        mn, mx = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
        scale = ((mx - mn) / levels).astype(np.float16)
        scale[scale == 0] = np.float16(1e-4)
        zeros = np.clip(np.round(-mn / scale.astype(np.float32)), 0, levels).astype(np.uint8)
        q = np.clip(np.round(g / scale.astype(np.float32)[..., None]) + zeros[..., None], 0, levels)
    q = q.reshape(out, n)
    if bits == 4:
        u = q.astype(np.uint8)
        qweight = u[:, 0::2] | (u[:, 1::2] << 4)  # low nibble = even column
    else:
        qweight = q.astype(np.int8 if symmetric else np.uint8)
    parts = {"qweight": qweight, "scales": scale}
    if zeros is not None:
        parts["zeros"] = zeros
    return parts


def unpack(parts: dict[str, np.ndarray], bits: int) -> np.ndarray:
    """The stored integers, one per weight (uint8 0..15 for int4; int8/uint8 as stored for int8)."""
    qw = parts["qweight"]
    if bits == 8:
        return qw
    q = np.empty((qw.shape[0], qw.shape[1] * 2), np.uint8)
    q[:, 0::2], q[:, 1::2] = qw & 0x0F, qw >> 4
    return q


def rtn_artifact(src: Path, out: Path, *, bits: int = 4, group: int = 32, symmetric: bool = True,
                 embeddings: bool = False, skip: tuple[str, ...] = ()) -> Path:
    """Quantize every decoder linear of the folder ``src`` (and the embedding table if asked) into a
    quantize-stage artifact at ``out``; modules matching ``skip`` stay float (listed as skipped)."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    layers, tensors, skipped = {}, {}, {}
    for name, w in weights.items():
        module = name[: -len(".weight")]
        linear = ".layers." in name and name.endswith("_proj.weight")
        emb = embeddings and name == "model.embed_tokens.weight"
        if (linear or emb) and not any(s in name for s in skip):
            for k, v in rtn(w, bits, group, symmetric).items():
                tensors[f"{module}.{k}"] = v
            layers[module] = {"bits": bits, "group_size": group, "symmetric": symmetric, "method": "rtn",
                              "shape": list(w.shape), "act_order": False, "activations": None}
        else:
            if linear:
                skipped[module] = "skipped by the test"
            tensors[name] = w.astype(np.float32)
    cfg = RTNConfig(bits=bits, group_size=group, symmetric=symmetric, embeddings=embeddings)
    with ArtifactWriter(out, stage="quantize", config=cfg, input_id="test:" + src.name) as art:
        save_file(tensors, str(art.path / "model.safetensors"), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("config.json", "special_tokens_map.json"):
                shutil.copy(f, art.path / f.name)
        (art.path / "quantization.json").write_text(json.dumps({
            "format_version": 1, "scheme": f"int{bits}-rtn", "layers": layers, "skipped": skipped,
            "embeddings": f"int{bits}" if embeddings else "keep", "lm_head": "keep",
            "tied": bool(config.get("tie_word_embeddings", False))}, indent=1))
    return out


def prune_llama(src: Path, out: Path, *, keep_layers: list[int], n_ff: int, heads_per_kv: int) -> Path:
    """Structured pruning of a tiny Llama folder: drop layers (renumbered), keep the first ``n_ff`` MLP
    channels and the first ``heads_per_kv`` query heads of every KV group; config updated to match."""
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    kv = cfg["num_key_value_heads"]
    rows = np.concatenate([np.arange(g * group * hd, (g * group + heads_per_kv) * hd) for g in range(kv)])
    new = {}
    for name, t in load_file(str(src / "model.safetensors")).items():
        parts = name.split(".")
        if parts[1] == "layers":
            if int(parts[2]) not in keep_layers:
                continue
            parts[2] = str(keep_layers.index(int(parts[2])))
            leaf = ".".join(parts[3:])
            if leaf in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                t = t[:n_ff]
            elif leaf == "mlp.down_proj.weight":
                t = t[:, :n_ff]
            elif leaf == "self_attn.q_proj.weight":
                t = t[rows]
            elif leaf == "self_attn.o_proj.weight":
                t = t[:, rows]
        new[".".join(parts)] = np.ascontiguousarray(t)
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(num_hidden_layers=len(keep_layers), intermediate_size=n_ff, num_attention_heads=kv * heads_per_kv,
               head_dim=hd)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out


def test_rtn_fixture_round_trips_its_integers():
    """The fixture itself: packing is low nibble first and unpacking gives back the rounded integers."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    for bits, sym in ((4, True), (4, False), (8, True), (8, False)):
        parts = rtn(w, bits, 32, sym)
        q = unpack(parts, bits).astype(np.float32)
        zero = parts["zeros"].astype(np.float32) if "zeros" in parts else (8.0 if bits == 4 else 0.0)
        zero = np.repeat(zero, 32, axis=1) if "zeros" in parts else zero
        w_hat = (q - zero) * np.repeat(parts["scales"].astype(np.float32), 32, axis=1)
        step = np.repeat(parts["scales"].astype(np.float32), 32, axis=1)
        assert np.all(np.abs(w_hat - w) <= step + 1e-6), (bits, sym)
        if bits == 4:
            assert parts["qweight"][0, 0] == (int(q[0, 0]) | (int(q[0, 1]) << 4))
