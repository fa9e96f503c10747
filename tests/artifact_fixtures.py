"""Hand-made artifacts for the export and harness tests, independent of the stages' own code.

- ``rtn`` / ``unpack`` / ``dequantize``: a plain numpy round-to-nearest into the quantize stage's
  documented layout (compress/quantize/FORMAT.md: qweight packed low nibble first, float16 scales,
  uint8 zeros when asymmetric), and its inverse.
- ``rtn_artifact``: a whole quantize-stage artifact (manifest stage "quantize", quantization.json,
  NAME.qweight / .scales / .zeros) written with that RTN; it loads through the loader compress.kinds names
  for stage "quantize", like any quantized artifact.
- ``train_on_ids``: a tiny model trained for a second on fixed ids. Random tiny models have flat
  next-token distributions, where top-1 agreement is decided by near-ties; one that has memorized the
  validation's check ids predicts them with high confidence, so per-precision tolerances apply unchanged.
- ``prune_tiny``: structured pruning by slicing (layers, MLP channels, KV groups or query heads per
  group), as a pruning stage would, for export tests of physically smaller models.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from compress.config import StageConfig, register_config
from compress.manifest import ArtifactWriter

_COPIED = ("config.json", "special_tokens_map.json", "chat_template.jinja")


@register_config("test-rtn-fixture")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RTNFixtureConfig(StageConfig):
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    embeddings: bool = False


def rtn(w: np.ndarray, bits: int, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """Round-to-nearest into the artifact layout: qweight, scales (float16) and zeros (asymmetric)."""
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


def dequantize(parts: dict[str, np.ndarray], bits: int, group: int) -> np.ndarray:
    """The artifact's own definition: w = (q - zero) * scale, per group, in float32."""
    q = unpack(parts, bits).astype(np.int16)
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
    into a quantize-stage artifact at ``out``; modules matching ``skip`` stay float (listed as skipped)."""
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
    cfg = RTNFixtureConfig(bits=bits, group_size=group, symmetric=symmetric, embeddings=embeddings)
    with ArtifactWriter(out, stage="quantize", config=cfg, input_id="test:" + src.name) as art:
        save_file(tensors, str(art.path / "model.safetensors"), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.name.startswith("tokenizer") or f.name in _COPIED:
                shutil.copy(f, art.path / f.name)
        (art.path / "quantization.json").write_text(json.dumps({
            "format_version": 1, "scheme": f"int{bits}-rtn", "layers": layers, "skipped": skipped,
            "embeddings": f"int{bits}" if embeddings else "keep", "lm_head": "keep",
            "tied": bool(config.get("tie_word_embeddings", False))}, indent=1))
        art.report["scheme"] = f"int{bits}-rtn"
    return out


def train_on_ids(model, tok, path: Path, ids: list[int], steps: int) -> Path:
    """Train ``model`` on ``ids`` for ``steps`` Adam steps (seeded) and save it with ``tok`` at ``path``."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would land in the CLI tests' captured stderr
    batch = torch.tensor([ids])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two busy ones
    try:
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = model(batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prune_tiny(src: Path, out: Path, *, keep_layers: list[int], n_ff: int, keep_kv_heads: int | None = None,
               heads_per_kv: int | None = None) -> Path:
    """Structured pruning of a tiny Llama/Gemma3 folder: drop layers (renumbered; Gemma's layer_types
    follow), keep the first ``n_ff`` MLP channels, and either the first ``keep_kv_heads`` KV groups with
    all their query heads or the first ``heads_per_kv`` query heads of every group. The config is
    updated, as a pruning stage would."""
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"]
    group = cfg["num_attention_heads"] // kv
    kv_keep = keep_kv_heads or kv
    per = heads_per_kv or group
    q_rows = np.concatenate([np.arange(g * group * hd, (g * group + per) * hd) for g in range(kv_keep)])
    kv_rows = np.arange(kv_keep * hd)
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
                t = t[q_rows]
            elif leaf in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                t = t[kv_rows]
            elif leaf == "self_attn.o_proj.weight":
                t = t[:, q_rows]
        new[".".join(parts)] = np.ascontiguousarray(t)
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(num_hidden_layers=len(keep_layers), intermediate_size=n_ff, num_attention_heads=kv_keep * per,
               num_key_value_heads=kv_keep, head_dim=hd)
    if "layer_types" in cfg:
        cfg["layer_types"] = [cfg["layer_types"][i] for i in keep_layers]
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out



def without_kv_declaration(folder: Path, dst: Path, key: str) -> Path:
    """``folder``'s model.onnx saved to ``dst`` without the metadata entry ``key`` that declares the shared
    KV buffer: the graph as exported before the buffer was shared (the runtime's growing-cache path)."""
    import onnx

    m = onnx.load(str(folder / "model.onnx"))
    props = [p for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    m.metadata_props.extend(props)
    onnx.save(m, str(dst / "model.onnx"))
    return dst / "model.onnx"


def torch_greedy(src: Path, prompt: list[int], new: int):
    """(greedy new ids, every position's logits of prompt + those ids) of the model folder ``src`` in the
    PyTorch runtime, one thread: the reference the ONNX KV-path tests compare with."""
    from runtimes import DeviceProfile, get_runtime

    rt = get_runtime("pytorch")
    rt.load(src, DeviceProfile(threads=1))
    want = rt.generate(prompt, new).new_ids
    return want, rt.logits(prompt + want)
