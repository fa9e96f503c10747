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

from artifact_fixtures import prune_tiny, rtn, rtn_artifact, train_on_ids, unpack

__all__ = ["memorize", "peaked", "prune_llama", "rememorize", "rtn", "rtn_artifact", "unpack"]

_ROOT = Path(tempfile.mkdtemp(prefix="onnx-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

SHAPES = {"llama": {"num_attention_heads": 6, "num_key_value_heads": 2},
          "gemma3": {"head_dim": 32}}


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

