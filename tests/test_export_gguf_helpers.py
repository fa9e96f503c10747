"""Test models for the GGUF export: tiny models that memorized the check ids (see
tests/artifact_fixtures.py for why), and the shared RTN / pruning fixtures re-exported for the GGUF tests.
The random models stay in use for F32, where agreement must be exact anyway."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from artifact_fixtures import RTNFixtureConfig, dequantize, prune_tiny, rtn, rtn_artifact, train_on_ids, unpack

__all__ = ["RTNFixtureConfig", "dequantize", "memorized_tiny", "prune_tiny", "rtn", "rtn_artifact"]

_ROOT = Path(tempfile.mkdtemp(prefix="gguf-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.lru_cache(maxsize=None)
def _tokenizer(add_bos: bool):
    from compress.tiny import build_tokenizer

    return build_tokenizer(add_bos=add_bos)


@functools.lru_cache(maxsize=None)
def memorized_tiny(arch: str = "llama", steps: int = 60, **overrides) -> Path:
    """A tiny model (compress/tiny.py shapes unless overridden) trained to memorize the check ids."""
    from compress.tiny import build_model

    from compress.gguf_import import check_ids

    name = "-".join([arch, str(steps)] + [f"{k}{v}" for k, v in sorted(overrides.items())])
    tok = _tokenizer(arch == "gemma3")
    return train_on_ids(build_model(arch, seed=0, **overrides), tok, _ROOT / f"memorized-{name}",
                        check_ids(tok, 128), steps)


def test_rtn_round_trips_its_integers():
    """The fixture itself: packing is low nibble first, unpacking gives back the rounded integers, and
    dequantizing reproduces the weights within half a step (a full step for the asymmetric clamp)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    for bits, sym in ((4, True), (4, False), (8, True), (8, False)):
        parts = rtn(w, bits, 32, sym)
        q = unpack(parts, bits)
        step = np.repeat(parts["scales"].astype(np.float32), 32, axis=1)
        assert np.all(np.abs(dequantize(parts, bits, 32) - w) <= step + 1e-6), (bits, sym)
        if bits == 4:
            assert parts["qweight"].dtype == np.uint8 and parts["qweight"].shape == (8, 32)
            assert parts["qweight"][0, 0] == (int(q[0, 0]) | (int(q[0, 1]) << 4))
            if sym:
                assert (np.abs(dequantize(parts, bits, 32) - w) <= step / 2 + 1e-6).all()
