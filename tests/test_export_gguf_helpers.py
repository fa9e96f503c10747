"""Test models for the GGUF export: memorized tiny models, RTN-quantized artifacts, pruned models.

Random tiny models have flat next-token distributions, so top-1 agreement between PyTorch and a
4-bit GGUF is decided by near-ties. A tiny model that has memorized the validation's own check ids
(a second of training on 128 tokens) predicts them with ~90% confidence, from context, so the
per-type tolerances apply to it unchanged. The random models stay in use for F32, where agreement
must be exact anyway.

``rtn_artifact`` writes the quantize stage's documented layout (manifest stage "quantize",
quantization.json, NAME.qweight/.scales/.zeros) with a plain numpy RTN, independent of the
quantize stage's own code.
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

_ROOT = Path(tempfile.mkdtemp(prefix="gguf-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


@register_config("test-rtn-fixture")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RTNFixtureConfig(StageConfig):
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    embeddings: bool = False


@functools.lru_cache(maxsize=None)
def _tokenizer(add_bos: bool):
    from tiny import build_tokenizer

    return build_tokenizer(add_bos=add_bos)


@functools.lru_cache(maxsize=None)
def memorized_tiny(arch: str = "llama", steps: int = 60, **overrides) -> Path:
    """A tiny model (tests/tiny.py shapes unless overridden) trained to memorize the check ids."""
    import torch
    from tiny import build_model

    from compress.gguf_import import check_ids

    name = "-".join([arch, str(steps)] + [f"{k}{v}" for k, v in sorted(overrides.items())])
    path = _ROOT / f"memorized-{name}"
    tok = _tokenizer(arch == "gemma3")
    ids = torch.tensor([check_ids(tok, 128)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains 30x faster on one thread than on two busy ones
    try:
        model = build_model(arch, seed=0, **overrides).train()
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


def rtn(w: np.ndarray, bits: int, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """Round-to-nearest into the artifact layout: qweight, scales (float16) and zeros (asymmetric)."""
    out, n = w.shape
    g = w.reshape(out, n // group, group).astype(np.float32)
    if symmetric:
        qmax = 7 if bits == 4 else 127
        scale = (np.abs(g).max(-1) / qmax).astype(np.float16)
        scale[scale == 0] = np.float16(1e-4)
        zero = 8 if bits == 4 else 0
        lo, hi = (0, 15) if bits == 4 else (-127, 127)
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
        qweight = u[:, 0::2] | (u[:, 1::2] << 4)
    else:
        qweight = q.astype(np.int8 if symmetric else np.uint8)
    res = {"qweight": qweight, "scales": scale}
    if zeros is not None:
        res["zeros"] = zeros
    return res


def dequantize(parts: dict[str, np.ndarray], bits: int, group: int) -> np.ndarray:
    """The artifact's own definition: w = (q - zero) * scale, per group, in float32."""
    qw = parts["qweight"]
    if bits == 4:
        q = np.empty((qw.shape[0], qw.shape[1] * 2), dtype=np.int16)
        q[:, 0::2], q[:, 1::2] = qw & 0x0F, qw >> 4
    else:
        q = qw.astype(np.int16)
    scales = parts["scales"].astype(np.float32)
    if "zeros" in parts:
        zero = parts["zeros"].astype(np.int16)
    else:
        zero = np.full(scales.shape, 8 if bits == 4 else 0, dtype=np.int16)
    out, n = q.shape
    w = (q.reshape(out, -1, group) - zero[..., None]).astype(np.float32) * scales[..., None]
    return w.reshape(out, n)


def rtn_artifact(src: Path, out: Path, *, bits: int = 4, group: int = 32, symmetric: bool = True,
                 embeddings: bool = False, skip: tuple[str, ...] = ()) -> Path:
    """Quantize every decoder linear of the model folder ``src`` (and the embedding table if asked)
    into a quantize-stage artifact at ``out``."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(src / "model.safetensors"))
    cfg = RTNFixtureConfig(bits=bits, group_size=group, symmetric=symmetric, embeddings=embeddings)
    layers, tensors, skipped = {}, {}, {}
    for name, w in weights.items():
        lin = name[: -len(".weight")]
        is_linear = ".layers." in name and name.endswith("_proj.weight")
        is_emb = embeddings and name == "model.embed_tokens.weight"
        if (is_linear or is_emb) and not any(s in name for s in skip):
            parts = rtn(w, bits, group, symmetric)
            for k, v in parts.items():
                tensors[f"{lin}.{k}"] = v
            layers[lin] = {"bits": bits, "group_size": group, "symmetric": symmetric, "method": "rtn",
                           "shape": list(w.shape), "act_order": False, "activations": None}
        else:
            if is_linear:
                skipped[lin] = "skipped by the test"
            tensors[name] = w.astype(np.float32)
    config = json.loads((src / "config.json").read_text())
    with ArtifactWriter(out, stage="quantize", config=cfg, input_id="test:" + src.name) as art:
        save_file(tensors, str(art.path / "model.safetensors"), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("config.json", "special_tokens_map.json",
                                                            "chat_template.jinja"):
                shutil.copy(f, art.path / f.name)
        (art.path / "quantization.json").write_text(json.dumps({
            "format_version": 1, "scheme": f"int{bits}-rtn", "layers": layers, "skipped": skipped,
            "embeddings": f"int{bits}" if embeddings else "keep", "lm_head": "keep",
            "tied": bool(config.get("tie_word_embeddings", False))}, indent=1))
        art.report["scheme"] = f"int{bits}-rtn"
    return out


def prune_tiny(src: Path, out: Path, *, keep_layers: list[int], n_ff: int, keep_kv_heads: int) -> Path:
    """Structured pruning of a tiny Llama/Gemma3 folder: drop layers (renumbered; Gemma's layer_types
    follow), keep the first ``n_ff`` MLP channels and the first ``keep_kv_heads`` KV groups with their
    query heads. The config is updated, as a pruning stage would."""
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q_per_kv = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    n_q = keep_kv_heads * q_per_kv
    w = load_file(str(src / "model.safetensors"))
    new = {}
    for name, t in w.items():
        parts = name.split(".")
        if parts[1] == "layers":
            old = int(parts[2])
            if old not in keep_layers:
                continue
            parts[2] = str(keep_layers.index(old))
            leaf = ".".join(parts[3:])
            if leaf in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                t = t[:n_ff]
            elif leaf == "mlp.down_proj.weight":
                t = t[:, :n_ff]
            elif leaf == "self_attn.q_proj.weight":
                t = t[: n_q * hd]
            elif leaf in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                t = t[: keep_kv_heads * hd]
            elif leaf == "self_attn.o_proj.weight":
                t = t[:, : n_q * hd]
        new[".".join(parts)] = np.ascontiguousarray(t)
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(num_hidden_layers=len(keep_layers), intermediate_size=n_ff, num_attention_heads=n_q,
               num_key_value_heads=keep_kv_heads, head_dim=hd)
    if "layer_types" in cfg:
        cfg["layer_types"] = [cfg["layer_types"][i] for i in keep_layers]
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out


def test_rtn_fixture_matches_the_documented_layout():
    """The fixture itself: int4 pairs are packed low nibble first, and dequantizing reproduces the
    weights within half a step."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 64)).astype(np.float32)
    parts = rtn(w, 4, 32, True)
    assert parts["qweight"].shape == (6, 32) and parts["qweight"].dtype == np.uint8
    assert parts["scales"].shape == (6, 2) and parts["scales"].dtype == np.float16
    q0 = np.round(w[0, 0] / np.float32(parts["scales"][0, 0])) + 8
    assert parts["qweight"][0, 0] & 0x0F == np.clip(q0, 0, 15)
    err = np.abs(dequantize(parts, 4, 32) - w).reshape(6, 2, 32)
    assert (err <= parts["scales"].astype(np.float32)[..., None] / 2 + 1e-6).all()
    parts8 = rtn(w, 8, 32, False)
    assert parts8["qweight"].dtype == np.uint8 and parts8["zeros"].shape == (6, 2)
    assert np.abs(dequantize(parts8, 8, 32) - w).max() < 0.02
