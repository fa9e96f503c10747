"""The decoder graph: onnxruntime's fused CPU contrib ops, one block per layer, driven by the arch table.

    model, weight_map = build_decoder(src, spec, dims, plan, rope, cfg)

Inputs: ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, past + seq],
``past_key_values.{i}.key|value`` float32 [batch, kv_heads, past, head_dim] (``kv.py`` retypes them and the
presents to ``kv_dtype`` and declares that past and present may be one buffer of any length) and ``logits_to_keep``
(int64 scalar: 0 = every position, k > 0 = only the last k, which spares prefill the vocabulary
projection of the prompt). ``logits_to_keep`` is optional: an initializer of the same name holds its
default, 0, so onnxruntime-genai's generator, which feeds only the inputs it knows, gets every position
(an initializer that is also a graph input is overridable, and onnxruntime does not fold it; our loop
still feeds 1). Outputs: ``logits`` float32 and ``present.{i}.key|value``; ``genai.py`` writes the
``genai_config.json`` that names them for onnxruntime-genai.

Per layer, as onnxruntime-genai builds it: SkipSimplifiedLayerNormalization (residual add + RMSNorm in
one op), one MatMul/MatMulNBits for q, k and v together, GroupQueryAttention (rotary from cos/sin tables, of
the first rotary_dim dims of each head; longrope: an If picks the short or long factors' tables by the
total length; the KV cache written after the valid prefix ``attention_mask`` gives, grouped heads, sliding
window), one for gate and up (Phi-3's fused qkv_proj and gate_up_proj are taken as they are), QuickGelu(alpha=1) = SiLU
or FastGelu (tanh form) for the activation. Gemma's per-head q/k RMSNorm is Reshape ->
SimplifiedLayerNormalization -> Reshape before attention; its (1 + weight) is folded into the weights.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx

from .arch import ArchSpec, ModelDims, RopeTables
from .config import OnnxConfig
from .graph import FLOAT, INT64, MS, Graph, nbits_bits, nbits_tensors, value_info
from .levels import initial_level
from .plan import EMBED, HEAD, Plan
from .weights import QuantizedWeight, WeightSource

INT64_MAX = np.iinfo(np.int64).max


class _Builder:
    def __init__(self, src: WeightSource, spec: ArchSpec, dims: ModelDims, plan: Plan, cfg: OnnxConfig, config):
        self.g, self.src, self.spec, self.dims, self.plan, self.cfg = Graph(), src, spec, dims, plan, cfg
        self.scale = float(spec.attn_scale(config, dims.head_dim))
        self.weight_map: dict[str, dict] = {}  # HF module -> node and output rows holding it

    # -- weights -------------------------------------------------------------------------------
    def float_weight(self, name: str, array: np.ndarray) -> str:
        """A float initializer; float16 storage is cast back to float32 (folded when the session loads)."""
        if self.plan.float_type == "float16":
            return self.g.one("Cast", [self.g.init(name, array.astype(np.float16))], to=FLOAT, name=f"{name}/cast")
        return self.g.init(name, array.astype(np.float32))

    def norm_weight(self, hf: str) -> str:
        return self.g.init(hf, self.src.float(hf) + np.float32(self.spec.norm_offset))

    def linear(self, x: str, names: list[str], node: str) -> str:
        """One MatMul (or MatMulNBits) computing ``names`` side by side; outputs concatenated in order."""
        choices = [self.plan.linears[n] for n in names]
        rows = [self.src.float(f"{n}.weight").shape[0] for n in names]
        starts = np.concatenate([[0], np.cumsum(rows)]).tolist()
        for n, a, b in zip(names, starts, starts[1:]):
            self.weight_map[n] = {"node": node, "rows": [a, b]}
        biases = [self.src.state.get(f"{n}.bias") for n in names]
        bias = None if all(b is None for b in biases) else np.concatenate(
            [b if b is not None else np.zeros(r, np.float32) for b, r in zip(biases, rows)])
        if choices[0].kind == "nbits":
            qw = _concat([c.qw for c in choices])
            return self.nbits(x, qw, choices[0].block, node, bias)
        w = np.concatenate([self.src.float(f"{n}.weight") for n in names], axis=0)
        y = self.g.one("MatMul", [x, self.float_weight(f"{node}.weight", w.T)], name=node)
        if bias is not None:
            y = self.g.one("Add", [y, self.g.init(f"{node}.bias", bias)], name=f"{node}/bias")
        return y

    def nbits(self, x: str, qw: QuantizedWeight, block: int, node: str, bias=None, shared: tuple | None = None) -> str:
        """MatMulNBits from ``qw``; ``shared`` = (B, scales, zero points) names already in the graph."""
        n, k = qw.shape
        if shared is None:
            data, scales, zeros = nbits_tensors(qw, block)
            shared = (self.g.init(f"{node}.qweight", data), self.g.init(f"{node}.scales", scales),
                      self.g.init(f"{node}.zeros", zeros) if zeros is not None else "")
        ins = [x, *shared]
        if bias is not None:
            ins += ["", self.g.init(f"{node}.bias", bias)]
        return self.g.one("MatMulNBits", ins, domain=MS, name=node, K=k, N=n, bits=nbits_bits(qw.bits),
                          block_size=block, accuracy_level=initial_level(self.cfg))

    # -- blocks --------------------------------------------------------------------------------
    def rms(self, x: str, weight: str, node: str) -> str:
        return self.g.node("SimplifiedLayerNormalization", [x, weight], 1, name=node, axis=-1,
                           epsilon=self.dims.eps, stash_type=1)[0]

    def skip_rms(self, x: str, residual: str, weight: str, node: str) -> tuple[str, str]:
        out = self.g.node("SkipSimplifiedLayerNormalization", [x, residual, weight], 4, domain=MS, name=node,
                          epsilon=self.dims.eps)
        return out[0], out[3]

    def head_norm(self, x: str, hf: str, node: str) -> str:
        d = self.dims.head_dim
        h = self.g.one("Reshape", [x, self.g.const([0, 0, -1, d])], name=f"{node}/split_heads")
        h = self.rms(h, self.norm_weight(hf), node)
        return self.g.one("Reshape", [h, self.g.const([0, 0, -1])], name=f"{node}/merge_heads")

    def attention(self, i: int, x: str, seqlens: str, total: str, rope: dict[str, tuple[str, str]]) -> str:
        p, ld = f"model.layers.{i}.self_attn", self.dims.layers[i]
        # q, k, v as the family holds them: three modules, or one fused (Phi-3's qkv_proj) taken as is
        qkv_names = [f"model.layers.{i}.{m}" for m in self.spec.qkv]
        fused = _fusable([self.plan.linears[n] for n in qkv_names])
        if fused:
            qkv = self.linear(x, qkv_names, f"layers.{i}.attn.qkv_proj")
        if fused and not self.spec.qk_norm:
            q, k, v = qkv, "", ""  # GroupQueryAttention takes the packed projection as it is
        elif fused:
            d = self.dims.head_dim
            q, k, v = self.g.node("Split", [qkv, self.g.const([ld.heads * d, ld.kv_heads * d, ld.kv_heads * d])], 3,
                                  name=f"layers.{i}.attn.qkv_split", axis=-1)
        else:
            q, k, v = (self.linear(x, [n], f"layers.{i}.attn.{n.rsplit('.', 1)[1]}") for n in qkv_names)
        if self.spec.qk_norm:
            q = self.head_norm(q, f"{p}.q_norm.weight", f"layers.{i}.attn.q_norm")
            k = self.head_norm(k, f"{p}.k_norm.weight", f"layers.{i}.attn.k_norm")
        cos, sin = rope[ld.rope]
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        out = self.g.node(
            "GroupQueryAttention", [q, k, v, past_k, past_v, seqlens, total, cos, sin], 3, domain=MS,
            name=f"layers.{i}.attn.gqa", outputs=[f"layers.{i}.attn.gqa/out", f"present.{i}.key", f"present.{i}.value"],
            num_heads=ld.heads, kv_num_heads=ld.kv_heads, scale=self.scale,
            do_rotary=1, rotary_interleaved=0, local_window_size=ld.window)
        return self.linear(out[0], [f"{p}.o_proj"], f"layers.{i}.attn.o_proj")

    def mlp(self, i: int, x: str) -> str:
        p, ld = f"model.layers.{i}.mlp", self.dims.layers[i]
        names = [f"model.layers.{i}.{m}" for m in self.spec.gate_up]  # one fused (Phi-3): gate rows first
        if _fusable([self.plan.linears[n] for n in names]):
            gu = self.linear(x, names, f"layers.{i}.mlp.gate_up_proj")
            gate, up = self.g.node("Split", [gu, self.g.const([ld.intermediate, ld.intermediate])], 2,
                                   name=f"layers.{i}.mlp.gate_up_split", axis=-1)
        else:
            gate = self.linear(x, names[:1], f"layers.{i}.mlp.gate_proj")
            up = self.linear(x, names[1:], f"layers.{i}.mlp.up_proj")
        if self.dims.activation == "silu":  # QuickGelu(x) = x * sigmoid(alpha * x): SiLU at alpha 1
            act = self.g.one("QuickGelu", [gate], domain=MS, name=f"layers.{i}.mlp.act", alpha=1.0)
        else:
            act = self.g.one("FastGelu", [gate], domain=MS, name=f"layers.{i}.mlp.act")
        h = self.g.one("Mul", [act, up], name=f"layers.{i}.mlp.mul")
        return self.linear(h, [f"{p}.down_proj"], f"layers.{i}.mlp.down_proj")

    # -- ends of the model ---------------------------------------------------------------------
    def embed(self, ids: str) -> str:
        emb = self.plan.embeddings
        if emb.kind == "gbq":
            data, scales, zeros = nbits_tensors(emb.qw, emb.block)
            v, h = emb.qw.shape
            table = self.g.init(f"{EMBED}.qweight", data.reshape(v, -1))
            ins = [table, ids, self.g.init(f"{EMBED}.scales", scales)]
            if zeros is not None:
                ins.append(self.g.init(f"{EMBED}.zeros", zeros))
            x = self.g.one("GatherBlockQuantized", ins, domain=MS, name="embed_tokens", bits=nbits_bits(emb.qw.bits),
                           block_size=emb.block, gather_axis=0, quantize_axis=1)
            self._shared_table = (table, ins[2], ins[3] if zeros is not None else None)
        else:
            w = self.src.float(f"{EMBED}.weight")
            if emb.kind == "float16":
                x = self.g.one("Gather", [self.g.init(f"{EMBED}.weight", w.astype(np.float16)), ids], name="embed_tokens")
                x = self.g.one("Cast", [x], to=FLOAT, name="embed_tokens/cast")
            else:
                x = self.g.one("Gather", [self.g.init(f"{EMBED}.weight", w), ids], name="embed_tokens")
        if self.spec.embed_scale:
            scale = np.float32(np.sqrt(np.float32(self.dims.hidden)))
            x = self.g.one("Mul", [x, self.g.const(scale, np.float32)], name="embed_tokens/scale")
        return x

    def head(self, x: str) -> str:
        head, n = self.plan.head, self.dims.vocab
        hf = f"{HEAD}.weight" if self.src.has(f"{HEAD}.weight") else f"{EMBED}.weight"
        self.weight_map[HEAD] = {"node": "lm_head", "rows": [0, n]}
        if head.kind == "nbits":
            shared = None
            if self.plan.shared:  # the table GatherBlockQuantized reads, viewed as MatMulNBits' B
                table, scales, zeros = self._shared_table
                blob = head.block * nbits_bits(head.qw.bits) // 8
                b = self.g.one("Reshape", [table, self.g.const([n, -1, blob])], name="lm_head/shared_qweight")
                shared = (b, scales, zeros or "")
            return self.nbits(x, head.qw, head.block, "lm_head", shared=shared)
        w = self.src.float(hf)
        if self.dims.tied and self.plan.embeddings.kind.startswith("float"):
            # share the embedding table: Gemm with transB reads it as it is, no transposed copy in the file
            table = f"{EMBED}.weight"
            if self.plan.embeddings.kind == "float16":
                table = self.g.one("Cast", [table], to=FLOAT, name="lm_head/cast")
            flat = self.g.one("Reshape", [x, self.g.const([-1, self.dims.hidden])], name="lm_head/flatten")
            y = self.g.one("Gemm", [flat, table], name="lm_head", transB=1)
            shape = self.g.one("Shape", [x], name="lm_head/shape", end=2)
            full = self.g.one("Concat", [shape, self.g.const([n])], name="lm_head/out_shape", axis=0)
            return self.g.one("Reshape", [y, full], name="lm_head/unflatten")
        return self.g.one("MatMul", [x, self.float_weight(f"{HEAD}.weight", w.T)], name="lm_head")

    def build(self, rope_np: dict[str, RopeTables]) -> onnx.ModelProto:
        g, d = self.g, self.dims
        g.inputs += [value_info("input_ids", INT64, ["batch", "seq"]),
                     value_info("attention_mask", INT64, ["batch", "total"])]
        for i, ld in enumerate(d.layers):
            for kv in ("key", "value"):
                g.inputs.append(value_info(f"past_key_values.{i}.{kv}", FLOAT, ["batch", ld.kv_heads, "past", d.head_dim]))
        g.inputs.append(value_info("logits_to_keep", INT64, []))
        g.init("logits_to_keep", np.array(0, np.int64))  # the default: every position
        # GroupQueryAttention's bookkeeping, as onnxruntime-genai derives it from the mask
        lens = g.one("ReduceSum", ["attention_mask", g.const([1])], name="mask/len", keepdims=0)
        lens = g.one("Sub", [lens, g.const(1)], name="mask/last")
        seqlens = g.one("Cast", [lens], to=onnx.TensorProto.INT32, name="mask/seqlens_k")
        total = g.one("Gather", [g.one("Shape", ["attention_mask"], name="mask/shape"), g.const(1)], name="mask/total",
                      axis=0)
        total = g.one("Cast", [total], to=onnx.TensorProto.INT32, name="mask/total_i32")
        rope = {key: _rope_inputs(g, key, t, total) for key, t in rope_np.items()}

        x = self.embed("input_ids")
        residual, carry = x, None
        norms = self.spec.norms
        for i in range(len(d.layers)):
            p = f"model.layers.{i}"
            w_in = self.norm_weight(f"{p}.{norms['input']}.weight")
            if carry is None:
                h = self.rms(residual, w_in, f"layers.{i}.input_norm")
            else:
                h, residual = self.skip_rms(carry, residual, w_in, f"layers.{i}.input_norm")
            a = self.attention(i, h, seqlens, total, rope)
            if norms["post_attn"]:
                a = self.rms(a, self.norm_weight(f"{p}.{norms['post_attn']}.weight"), f"layers.{i}.post_attn_norm")
            h, residual = self.skip_rms(a, residual, self.norm_weight(f"{p}.{norms['pre_mlp']}.weight"),
                                        f"layers.{i}.pre_mlp_norm")
            carry = self.mlp(i, h)
            if norms["post_mlp"]:
                carry = self.rms(carry, self.norm_weight(f"{p}.{norms['post_mlp']}.weight"), f"layers.{i}.post_mlp_norm")
        h, _ = self.skip_rms(carry, residual, self.norm_weight("model.norm.weight"), "final_norm")
        start = g.one("Neg", [g.one("Unsqueeze", ["logits_to_keep", g.const([0])], name="keep/vec")], name="keep/start")
        h = g.one("Slice", [h, start, g.const([INT64_MAX]), g.const([1])], name="keep/slice")
        logits = self.head(h)
        if d.final_softcap:
            cap = g.const(np.float32(d.final_softcap), np.float32)
            logits = g.one("Mul", [g.one("Tanh", [g.one("Div", [logits, cap], name="softcap/div")], name="softcap/tanh"),
                                   cap], name="softcap/mul")
        g.one("Identity", [logits], outputs=["logits"], name="logits")
        g.outputs.append(value_info("logits", FLOAT, ["batch", "kept", d.vocab]))
        for i, ld in enumerate(d.layers):
            for kv in ("key", "value"):
                g.outputs.append(value_info(f"present.{i}.{kv}", FLOAT, ["batch", ld.kv_heads, "total", d.head_dim]))
        model = g.model(f"compress ONNX export of a {self.spec.name} decoder ({self.cfg.precision})")
        onnx.helper.set_model_props(model, {"compress.weight_map": json.dumps(self.weight_map)})
        return model


def build_decoder(src: WeightSource, spec: ArchSpec, dims: ModelDims, plan: Plan, rope, cfg: OnnxConfig,
                  config) -> tuple[onnx.ModelProto, dict[str, dict]]:
    """The decoder as an in-memory ModelProto, plus where each HF weight went (node, output rows)."""
    b = _Builder(src, spec, dims, plan, cfg, config)
    model = b.build(rope)
    return model, b.weight_map


def _rope_inputs(g: Graph, key: str, t: RopeTables, total: str) -> tuple[str, str]:
    """GroupQueryAttention's cos/sin caches for one rotary kind. Longrope: an If on the total sequence
    length (past + new, what transformers' largest position + 1 is) picks the long factors' table past
    ``original`` positions and the short one up to it, as onnxruntime-genai's builder does for Phi-3 128k;
    both tables are initializers of the main graph that the branches pass on."""
    cos, sin = g.init(f"rope.{key}.cos", t.cos), g.init(f"rope.{key}.sin", t.sin)
    if t.long is None:
        return cos, sin
    long_cos, long_sin = g.init(f"rope.{key}.long.cos", t.long[0]), g.init(f"rope.{key}.long.sin", t.long[1])
    is_long = g.one("Greater", [total, g.const(t.original, np.int32)], name=f"rope.{key}/is_long")

    def branch(name: str, c: str, s: str) -> onnx.GraphProto:
        outs = [f"rope.{key}.{name}/cos", f"rope.{key}.{name}/sin"]
        return onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", [c], outs[:1]), onnx.helper.make_node("Identity", [s], outs[1:])],
            f"rope_{key}_{name}", [], [value_info(o, FLOAT, None) for o in outs])

    return tuple(g.node("If", [is_long], 2, name=f"rope.{key}/select", outputs=[f"rope.{key}.cos_cache",
                                                                                f"rope.{key}.sin_cache"],
                        then_branch=branch("long", long_cos, long_sin), else_branch=branch("short", cos, sin)))


def _fusable(choices) -> bool:
    first = choices[0]
    if first.kind != "nbits":
        return all(c.kind == first.kind for c in choices)
    return all(c.kind == "nbits" and c.block == first.block and c.qw.bits == first.qw.bits
               and (c.qw.zeros is None) == (first.qw.zeros is None) and c.qw.group_size == first.qw.group_size
               for c in choices)


def _concat(qws: list[QuantizedWeight]) -> QuantizedWeight:
    """Matrices with the same grid stacked by output rows (each row is packed on its own)."""
    if len(qws) == 1:
        return qws[0]
    f = qws[0]
    zeros = None if f.zeros is None else np.concatenate([q.zeros for q in qws])
    return dataclasses.replace(f, name="+".join(q.name for q in qws), shape=(sum(q.shape[0] for q in qws), f.shape[1]),
                               qweight=np.concatenate([q.qweight for q in qws]),
                               scales=np.concatenate([q.scales for q in qws]), zeros=zeros)
