"""The integer grid and its storage layout: the contract every exporter relies on (FORMAT.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.quantize.grid import Grid, QTensor, rtn


def _w(out=16, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, cols, generator=g) * 0.05


def test_int8_per_channel_round_trip_error_is_within_half_a_step():
    w = _w()
    qt = rtn(w, Grid(8, w.shape[1], True))
    step = qt.scale.float()  # one scale per row
    err = (qt.dequantize() - w).abs()
    assert bool((err <= step / 2 * (1 + 1e-3) + 1e-9).all())
    # and the relative error of int8 is small in absolute terms: < 0.5% of the row's max |w|
    assert float((err.amax(1) / w.abs().amax(1)).max()) < 0.005


def test_int4_symmetric_maps_each_groups_signed_extreme_to_minus_eight():
    w = _w(cols=64)
    grid = Grid(4, 32, True)
    qt = rtn(w, grid)
    g = w.reshape(16, 2, 32)
    idx = g.abs().argmax(-1)
    q_extreme = qt.q.reshape(16, 2, 32).gather(-1, idx[..., None]).squeeze(-1)
    assert bool((q_extreme == 0).all())  # (0 - 8) * scale = the extreme
    assert int(qt.q.min()) >= 0 and int(qt.q.max()) <= 15


def test_integers_are_chosen_against_the_fp16_scale():
    w = _w()
    for grid in (Grid(4, 32, True), Grid(4, 64, False), Grid(8, 128, True), Grid(8, 32, False)):
        qt = rtn(w, grid)
        assert qt.scale.dtype == torch.float16
        s = qt.scale.float().repeat_interleave(grid.group_size, 1)
        z = (qt.zero.float().repeat_interleave(grid.group_size, 1) if qt.zero is not None
             else float(grid.implicit_zero))
        lo, hi = grid.qrange
        expect = (torch.round(w / s) + z).clamp(lo, hi).to(torch.int32)
        assert torch.equal(qt.q, expect), grid


def test_int4_packing_puts_the_even_column_in_the_low_nibble():
    q = torch.tensor([[1, 2, 15, 0], [7, 8, 3, 12]], dtype=torch.int32)
    qt = QTensor(q, torch.ones(2, 1, dtype=torch.float16), None, Grid(4, 4, True))
    packed = qt.tensors("x")["x.qweight"]
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2)
    assert packed.tolist() == [[1 | 2 << 4, 15 | 0 << 4], [7 | 8 << 4, 3 | 12 << 4]]
    back = QTensor.from_tensors("x", qt.tensors("x"), Grid(4, 4, True))
    assert torch.equal(back.q, q)


@pytest.mark.parametrize("bits,symmetric,dtype", [(8, True, torch.int8), (8, False, torch.uint8),
                                                  (4, False, torch.uint8)])
def test_stored_dtypes_and_zero_points(bits, symmetric, dtype):
    w = _w()
    qt = rtn(w, Grid(bits, 32, symmetric))
    t = qt.tensors("m")
    assert t["m.qweight"].dtype == dtype
    assert ("m.zeros" in t) == (not symmetric)
    if not symmetric:
        assert t["m.zeros"].dtype == torch.uint8 and t["m.zeros"].shape == (16, 4)
    # dequantization formula, computed independently in numpy from the stored tensors
    back = QTensor.from_tensors("m", t, qt.grid)
    q = back.q.numpy().astype(np.float32)
    s = np.repeat(t["m.scales"].numpy().astype(np.float32), 32, axis=1)
    z = (np.repeat(t["m.zeros"].numpy().astype(np.float32), 32, axis=1) if not symmetric
         else (8.0 if bits == 4 else 0.0))
    assert np.array_equal((q - z) * s, qt.dequantize().numpy())


def test_all_zero_group_dequantizes_to_zero_and_asymmetric_range_contains_zero():
    w = _w()
    w[:, :32] = 0.0
    w[0, 32:64] = torch.linspace(0.1, 0.2, 32)  # all positive: zero point must stay on the grid
    for grid in (Grid(4, 32, True), Grid(4, 32, False), Grid(8, 32, True)):
        qt = rtn(w, grid)
        deq = qt.dequantize()
        assert bool((deq[:, :32] == 0).all())
        assert float((deq[0, 32:64] - w[0, 32:64]).abs().max()) <= float(qt.scale[0, 1].abs()) / 2 + 1e-6

