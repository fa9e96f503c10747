"""Test models for the ONNX export: peaked tiny models, quantized artifacts in the documented layout,
and a structurally pruned student.

Random tiny models have flat next-token distributions, where top-1 agreement is decided by near-ties.
``peaked`` trains a tiny model for a second on the validation's own check ids, so it predicts them
with high confidence and the per-precision tolerances apply to it unchanged.

Shapes: onnxruntime's GroupQueryAttention needs head_dim % 16 == 0, so the tiny Llama here has
6 heads of 16 (hidden 96, 2 KV heads) and the tiny Gemma3 head_dim 32 (4 heads, 2 KV heads) with a
sliding window of 32 that the 64 check tokens cross.

The RTN artifact and pruning fixtures are shared with the GGUF tests: tests/artifact_fixtures.py.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import json
import re

import numpy as np
from artifact_fixtures import RTNFixtureConfig, prune_tiny, rtn, rtn_artifact, train_on_ids, unpack

__all__ = ["grid_artifact", "grid_integers", "memorize", "peaked", "prune_llama", "rememorize", "rtn", "rtn_artifact",
           "unpack"]

_ROOT = Path(tempfile.mkdtemp(prefix="onnx-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

SHAPES = {"llama": {"num_attention_heads": 6, "num_key_value_heads": 2},
          "gemma3": {"head_dim": 32}}


@functools.lru_cache(maxsize=None)
def peaked(arch: str = "llama", steps: int = 40, **overrides) -> Path:
    """A tiny model that has memorized the check ids (saved once per process)."""
    from compress.tiny import build_model, build_tokenizer

    name = "-".join([arch, str(steps)] + [f"{k}{v}" for k, v in sorted(overrides.items())])
    path = _ROOT / f"peaked-{name}"
    model = build_model(arch, seed=0, **{**SHAPES[arch], **overrides})
    return memorize(model, build_tokenizer(add_bos=(arch == "gemma3")), path, steps)


def memorize(model, tok, path: Path, steps: int = 40) -> Path:
    """Train ``model`` on the validation's check ids for ``steps`` Adam steps and save it with ``tok``."""
    from export.onnx.validate import check_ids

    return train_on_ids(model, tok, path, check_ids(tok, 64), steps)


def rememorize(folder: Path, out: Path, steps: int = 30) -> Path:
    """A saved model (e.g. just pruned) trained again on the check ids, as a distilled student would be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return memorize(AutoModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder)),
                    out, steps)


def prune_llama(src: Path, out: Path, *, keep_layers: list[int], n_ff: int, heads_per_kv: int) -> Path:
    """Drop layers, keep the first ``n_ff`` MLP channels and ``heads_per_kv`` query heads per KV group."""
    return prune_tiny(src, out, keep_layers=keep_layers, n_ff=n_ff, heads_per_kv=heads_per_kv)



def grid_integers(w: np.ndarray, bits: int, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """Round-to-nearest onto a 4/5/8-bit grid, stored as FORMAT.md lays it out (plain numpy, independent of
    compress): {"q": integers [out, in] as the format defines them, "qweight", "scales" (float16),
    "zeros" (uint8, asymmetric)}. Symmetric zero: 8 (int4), 16 (5-bit), 0 (int8, signed)."""
    out, n = w.shape
    g = w.reshape(out, n // group, group).astype(np.float32)
    if symmetric:
        half = {4: 8, 5: 16, 8: 0}[bits]
        scale = (np.abs(g).max(-1) / (127 if bits == 8 else half - 1)).astype(np.float16)
        scale[scale == 0] = np.float16(1e-4)
        lo, hi = (-127, 127) if bits == 8 else (0, 2 * half - 1)
        q = np.clip(np.round(g / scale.astype(np.float32)[..., None]) + half, lo, hi)
        zeros = None
    else:
        levels = (1 << bits) - 1
        mn, mx = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
        scale = ((mx - mn) / levels).astype(np.float16)
        scale[scale == 0] = np.float16(1e-4)
        zeros = np.clip(np.round(-mn / scale.astype(np.float32)), 0, levels).astype(np.uint8)
        q = np.clip(np.round(g / scale.astype(np.float32)[..., None]) + zeros[..., None], 0, levels)
    q = q.reshape(out, n).astype(np.int8 if bits == 8 and symmetric else np.uint8)
    qweight = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8) if bits == 4 else q
    parts = {"q": q, "qweight": qweight, "scales": scale}
    if zeros is not None:
        parts["zeros"] = zeros
    return parts


def grid_artifact(src: Path, out: Path, spec: dict[str, tuple[int, int, bool] | None], *,
                  embeddings: tuple[int, int, bool] | None = None) -> Path:
    """A quantize-stage artifact of the model folder ``src`` whose every decoder linear takes the grid of the
    first ``spec`` pattern (regex) matching its name: (bits, group (0 = per channel), symmetric), or None
    to keep it in float; ``embeddings`` quantizes the token table (a tied lm_head shares it)."""
    from safetensors.numpy import load_file, save_file

    from compress.manifest import ArtifactWriter

    weights = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    layers, tensors, skipped = {}, {}, {}
    for name, w in weights.items():
        module = name[: -len(".weight")]
        grid = None
        if ".layers." in name and name.endswith("_proj.weight"):
            grid = next((g for pat, g in spec.items() if re.search(pat, module)), None)
            if grid is None:
                skipped[module] = "kept in float by the test"
        elif name == "model.embed_tokens.weight":
            grid = embeddings
        if grid is None:
            tensors[name] = w.astype(np.float32)
            continue
        bits, group, sym = grid
        group = group or w.shape[1]
        parts = grid_integers(w, bits, group, sym)
        for k in ("qweight", "scales", "zeros"):
            if k in parts:
                tensors[f"{module}.{k}"] = parts[k]
        layers[module] = {"bits": bits, "group_size": group, "symmetric": sym, "method": "rtn", "shape": list(w.shape),
                          "act_order": False, "activations": None}
    if config.get("tie_word_embeddings") and embeddings is not None:
        tensors.pop("lm_head.weight", None)
    with ArtifactWriter(out, stage="quantize", config=RTNFixtureConfig(), input_id="test:" + src.name) as art:
        save_file(tensors, str(art.path / "model.safetensors"), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("config.json", "special_tokens_map.json"):
                shutil.copy(f, art.path / f.name)
        emb = f"int{embeddings[0]}" if embeddings else "keep"
        (art.path / "quantization.json").write_text(json.dumps({
            "format_version": 2 if any(m["bits"] == 5 for m in layers.values()) else 1, "scheme": "test-grid",
            "layers": layers, "skipped": skipped, "embeddings": emb, "lm_head": emb if config.get("tie_word_embeddings")
            else "keep", "tied": bool(config.get("tie_word_embeddings", False))}, indent=1))
    return out
