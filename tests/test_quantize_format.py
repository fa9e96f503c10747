"""The one reader of the quantized format (compress/quantize/format.py) against FORMAT.md, checked with an
independent numpy dequantization: 4/5/8-bit, symmetric and asymmetric, version 1 and 2, bad files refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from compress.errors import ArtifactError
from compress.quantize.format import FORMAT_VERSION, QuantizedWeight, open_quantized, read_quantization_json
from compress.quantize.grid import Grid, rtn

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_dequantize(raw: dict[str, np.ndarray], name: str, bits: int, group: int, symmetric: bool) -> np.ndarray:
    """FORMAT.md's dequantization, written from the spec alone (no compress code)."""
    qw = raw[f"{name}.qweight"]
    if bits == 4:
        q = np.empty((qw.shape[0], qw.shape[1] * 2), dtype=np.float64)
        q[:, 0::2], q[:, 1::2] = qw & 0x0F, qw >> 4
    else:
        q = qw.astype(np.float64)
    if symmetric:
        zero = {4: 8.0, 5: 16.0, 8: 0.0}[bits]
    else:
        zero = np.repeat(raw[f"{name}.zeros"].astype(np.float64), group, axis=1)
    scale = np.repeat(raw[f"{name}.scales"].astype(np.float64), group, axis=1)
    return ((q - zero) * scale).astype(np.float32)


def write_artifact(folder, layers: dict[str, tuple[torch.Tensor, Grid]], *, version: int = FORMAT_VERSION,
                   extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A minimal artifact folder (model.safetensors + quantization.json) from RTN on the given grids."""
    folder.mkdir(parents=True, exist_ok=True)
    raw: dict[str, np.ndarray] = dict(extra or {})
    entries = {}
    for name, (w, grid) in layers.items():
        qt = rtn(w, grid, name=name)
        raw.update({k: v.numpy() for k, v in qt.tensors(name).items()})
        entries[name] = {"bits": grid.bits, "group_size": grid.group_size, "symmetric": grid.symmetric,
                         "method": "rtn", "shape": list(w.shape), "act_order": False, "activations": None}
    save_file(raw, str(folder / "model.safetensors"))
    (folder / "quantization.json").write_text(json.dumps({
        "format_version": version, "scheme": "test", "layers": entries, "skipped": {}, "embeddings": "keep",
        "lm_head": "keep", "tied": False}))
    return raw


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_reader_dequantizes_exactly_like_the_spec(tmp_path, bits, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(24, 96) * torch.linspace(0.1, 3, 96)
    grid = Grid(bits, 32, symmetric)
    raw = write_artifact(tmp_path / "a", {"m.proj": (w, grid)}, extra={"m.norm.weight": np.ones(96, np.float32)})
    qf = open_quantized(tmp_path / "a")
    qw = qf.quantized("m.proj")
    assert (qw.bits, qw.group_size, qw.symmetric, qw.shape) == (bits, 32, symmetric, (24, 96))
    ref = reference_dequantize(raw, "m.proj", bits, 32, symmetric)
    assert np.array_equal(qw.dequantize(), ref)
    assert np.array_equal(qw.dequantize(), rtn(w, grid).dequantize().numpy())  # the PyTorch side agrees
    assert qf.float_names() == ["m.norm.weight"]
    assert qf.logical_names() == ["m.norm.weight", "m.proj.weight"] or set(qf.logical_names()) == {
        "m.norm.weight", "m.proj.weight"}
    assert isinstance(qf.weight("m.proj.weight"), QuantizedWeight)
    assert qf.weight("m.norm.weight").dtype == np.float32


def test_five_bit_storage_is_one_byte_per_value_centred_on_16(tmp_path):
    w = torch.tensor([[-1.0] + [0.5] * 31, [2.0] + [0.0] * 31])
    raw = write_artifact(tmp_path / "a", {"x": (w, Grid(5, 32, True))})
    assert raw["x.qweight"].dtype == np.uint8 and raw["x.qweight"].shape == (2, 32)
    q = open_quantized(tmp_path / "a").quantized("x").integers()
    assert q[0, 0] == 0 and q[1, 0] == 0  # the signed extreme maps to -16, like Q5_0's d = max / -16
    assert q[1, 1] == 16 and int(q.max()) <= 31
    raw = write_artifact(tmp_path / "b", {"x": (w, Grid(5, 32, False))})
    assert int(raw["x.zeros"].max()) <= 31 and int(raw["x.qweight"].max()) <= 31


def test_version_1_artifacts_still_read(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    raw = write_artifact(tmp_path / "v1", {"a": (w, Grid(4, 32, True)), "b": (w, Grid(8, 64, False))}, version=1)
    qf = open_quantized(tmp_path / "v1")
    assert qf.version == 1
    assert np.array_equal(qf.quantized("a").dequantize(), reference_dequantize(raw, "a", 4, 32, True))
    assert np.array_equal(qf.quantized("b").dequantize(), reference_dequantize(raw, "b", 8, 64, False))


def test_five_bits_in_a_version_1_file_and_unknown_versions_are_refused(tmp_path):
    w = torch.randn(8, 64)
    write_artifact(tmp_path / "a", {"a": (w, Grid(5, 32, True))}, version=1)
    with pytest.raises(ArtifactError, match=r"layers\.a\.bits: 5 is not one of 4, 8 \(format_version 1\)"):
        open_quantized(tmp_path / "a")
    write_artifact(tmp_path / "b", {"a": (w, Grid(4, 32, True))}, version=3)
    with pytest.raises(ArtifactError, match="format_version 3; this compress reads 1, 2"):
        read_quantization_json(tmp_path / "b")


def test_wrong_dtype_missing_zeros_and_off_grid_integers_are_named(tmp_path):
    w = torch.randn(8, 64)
    raw = write_artifact(tmp_path / "a", {"a": (w, Grid(5, 32, False))})
    bad = dict(raw)
    bad["a.qweight"] = raw["a.qweight"].astype(np.int8)
    save_file(bad, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"corrupt quantized tensor a\.qweight: I8 \[8, 64\], expected U8"):
        open_quantized(tmp_path / "a")
    bad = {k: v for k, v in raw.items() if k != "a.zeros"}
    save_file(bad, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"a\.zeros is missing"):
        open_quantized(tmp_path / "a")
    bad = dict(raw)
    bad["a.qweight"] = raw["a.qweight"].copy()
    bad["a.qweight"][0, 0] = 40
    save_file(bad, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"outside int5's 0\.\.31"):
        open_quantized(tmp_path / "a").quantized("a")


def test_from_integers_packs_like_the_writer():
    q = np.random.default_rng(0).integers(0, 16, size=(4, 64)).astype(np.uint8)
    s = np.full((4, 2), 0.5, np.float16)
    qw = QuantizedWeight.from_integers("x", q, s, None, bits=4, group_size=32, symmetric=True)
    assert qw.qweight.shape == (4, 32) and np.array_equal(qw.integers(), q)
    assert np.array_equal(qw.dequantize(), (q.astype(np.float32) - 8) * 0.5)
    rows = np.array([3, 1])
    assert np.array_equal(qw.take_rows(rows).dequantize(), qw.dequantize()[rows])


def test_reader_does_not_import_torch():
    code = ("import sys; import compress.quantize.format as f; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(f.FORMAT_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(FORMAT_VERSION)


def test_the_gguf_export_source_reads_through_the_same_reader():
    from export.gguf import source
    from compress.quantize import format as fmt

    assert source.QuantizedWeight is fmt.QuantizedWeight


def _ggml_q5(q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """ggml Q5_0 / Q5_1 blocks from the spec: fp16 d (fp16 m), 32 fifth bits in qh, low nibbles j | j+16."""
    rows, cols = q.shape
    q = q.reshape(-1, 32).astype(np.uint8)
    qh = np.zeros(len(q), dtype=np.uint32)
    for j in range(32):
        qh |= ((q[:, j] >> 4) & 1).astype(np.uint32) << np.uint32(j)
    ql = q & 0x0F
    parts = [np.asarray(d, np.float16).reshape(-1, 1).view(np.uint8)]
    if m is not None:
        parts.append(np.asarray(m, np.float16).reshape(-1, 1).view(np.uint8))
    parts += [qh.astype("<u4").reshape(-1, 1).view(np.uint8), ql[:, :16] | (ql[:, 16:] << 4)]
    return np.concatenate(parts, axis=1).reshape(rows, -1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int5_groups_of_64_are_ggml_q5_blocks_with_the_scale_repeated(tmp_path, symmetric):
    """FORMAT.md's exporter note, checked against gguf-py's own dequantization: symmetric int5 is Q5_0
    exactly; asymmetric is Q5_1 with d = s, m = -s*z, exact up to float16 rounding of m."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    torch.manual_seed(5)
    w = torch.randn(3, 128)
    write_artifact(tmp_path / "a", {"x": (w, Grid(5, 64, symmetric))})
    qw = open_quantized(tmp_path / "a").quantized("x")
    d = np.repeat(qw.scales, 2, axis=1)  # each 64-group is two 32-blocks
    if symmetric:
        got = dequantize(_ggml_q5(qw.integers(), d, None), Q.Q5_0)
        assert np.array_equal(got, qw.dequantize())
    else:
        m = np.repeat(-(qw.scales.astype(np.float32) * qw.zero_points()), 2, axis=1)
        got = dequantize(_ggml_q5(qw.integers(), d, m.astype(np.float16)), Q.Q5_1)
        tol = np.repeat(np.abs(m), 32, axis=1) * 2.0 ** -11 + 1e-7
        assert (np.abs(got - qw.dequantize()) <= tol).all()
