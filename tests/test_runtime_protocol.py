"""One Runtime protocol (#16 point 5): every runtime loads the same way and says what a decode step reads,
so that the bench worker and the roofline never ask which runtime they hold.

The byte counts are checked against a tiny Llama whose sizes are worked out by hand: hidden 96, MLP 160,
2 layers, 6 heads of 16 with 2 KV heads, vocabulary 320, embeddings untied.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from runtimes import DeviceProfile, get_runtime, import_backend, known_runtimes

ROOT = Path(__file__).resolve().parents[1]
NAME_BLIND = ("compress/harness/worker.py", "compress/harness/roofline.py")

HIDDEN, MLP, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 96, 160, 2, 6, 2, 16, 320
KV = KV_HEADS * HEAD_DIM
PER_LAYER = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV + 3 * HIDDEN * MLP + 2 * HIDDEN  # q o, k v, mlp, two norms
# every matrix, the final norm and the vocabulary projection; one row of the (untied) embedding table
MATRICES_F32 = 4 * (LAYERS * PER_LAYER + HIDDEN + VOCAB * HIDDEN + HIDDEN)
KV_F32 = 2 * LAYERS * KV * 4  # K and V of every layer, one position


def name_branches(source: str, names: set[str]) -> list[str]:
    """Where ``source`` names a runtime (a string literal that is one) or compares a ``.name``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(f"line {node.lineno}: the literal {node.value!r}")
        if isinstance(node, (ast.Compare, ast.Match)) and any(
                isinstance(n, ast.Attribute) and n.attr == "name" for n in ast.walk(node)):
            found.append(f"line {node.lineno}: a comparison of .name")
    return found


def test_bench_worker_and_roofline_never_ask_which_runtime_they_hold():
    names = set(known_runtimes())
    for path in NAME_BLIND:
        assert name_branches((ROOT / path).read_text(), names) == [], path


def test_the_guard_sees_a_branch_on_the_runtime_name():
    names = set(known_runtimes())
    assert name_branches('if rt.name == "x":\n    pass\n', names)
    assert name_branches('B = {"llama.cpp": 1}\n', names)
    assert name_branches('match rt.name:\n    case _:\n        pass\n', names)
    assert not name_branches('out = {"runtime": rt.name}\n', names)


@pytest.mark.parametrize("name", known_runtimes())
def test_every_runtime_loads_with_the_same_signature_and_counts_its_bytes(name):
    rt = get_runtime(name)
    params = inspect.signature(rt.load).parameters
    assert list(params)[:2] == ["artifact", "profile"]
    for kw, default in (("n_ctx", None), ("verify", True)):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY and params[kw].default is default, (name, kw)
    assert callable(rt.weight_bytes) and callable(rt.kv_bytes_per_position)


def test_import_backend_refuses_an_unknown_runtime_with_a_suggestion():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'llama.cpp'"):
        import_backend("llama.cp")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from compress.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("proto") / "llama", "llama", seed=0, num_attention_heads=HEADS,
                     num_key_value_heads=KV_HEADS)


def test_pytorch_counts_every_tensor_once_and_one_embedding_row(tiny):
    rt = get_runtime("pytorch")
    rt.load(tiny, DeviceProfile(threads=1), n_ctx=64)
    rotary = 2 * 4 * HEAD_DIM // 2  # buffers: inv_freq and transformers' copy of it, original_inv_freq
    assert rt.weight_bytes() == MATRICES_F32 + rotary
    assert rt.kv_bytes_per_position() == KV_F32


def test_llama_cpp_counts_the_gguf_tensors_and_an_f16_cache(tiny, tmp_path):
    from export.gguf import GGUFConfig, export_gguf

    path = export_gguf(str(tiny), GGUFConfig(qtype="F32", check_tokens=16), tmp_path / "gguf")
    rt = get_runtime("llama.cpp")
    rt.load(path.parent, DeviceProfile(threads=1), n_ctx=64)
    assert rt.weight_bytes() == MATRICES_F32
    assert rt.kv_bytes_per_position() == KV_F32 / 2


@pytest.mark.parametrize("kv_dtype,kv_bytes", [("float32", KV_F32), ("float16", KV_F32 / 2)])
def test_onnx_runtimes_count_the_initializers_once_and_the_cache_at_its_dtype(kv_dtype, kv_bytes, tiny, tmp_path):
    from export.onnx import OnnxConfig, export_onnx

    import numpy as np
    import onnx

    max_length = 64
    path = export_onnx(str(tiny), OnnxConfig(precision="fp32", check_tokens=16, max_length=max_length,
                                             kv_dtype=kv_dtype), tmp_path / "onnx")
    folder = path.parent
    rope = 2 * 4 * max_length * HEAD_DIM // 2  # the graph's cos and sin tables, one row per position
    # and its int64 shape constants (a few scalars), read from the file
    consts = sum(8 * int(np.prod(i.dims)) for i in onnx.load(str(path), load_external_data=False).graph.initializer
                 if i.data_type == onnx.TensorProto.INT64)
    assert 0 < consts < 128
    expected = MATRICES_F32 + rope + consts
    for name in ("onnxruntime", "onnxruntime-genai"):  # the same model file
        rt = get_runtime(name)
        rt.load(folder, DeviceProfile(threads=1), n_ctx=64)
        assert rt.weight_bytes() == expected, name
        assert rt.kv_bytes_per_position() == kv_bytes, name

