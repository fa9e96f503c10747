"""Small model surgery helpers shared by depth, width and sparsity pruning."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import IncompatibleLayerError
from ..quantize.layers import decoder_layers  # noqa: F401  (re-exported: one definition of "the layers")

# files of a source folder that are not the tokenizer (everything else is copied beside the new weights)
_NOT_TOKENIZER = {"config.json", "generation_config.json", "manifest.json", "quantization.json"}


def source_folder(spec: str) -> Path | None:
    """The folder a model argument reads from (bundled models: their cache folder), or None (GGUF, hub)."""
    from ..models import resolve_model

    src = resolve_model(spec)
    if src.kind == "hf_dir":
        return src.path
    if src.kind == "bundled":
        from ..fetch import cached_folder

        return cached_folder(src.spec)
    return None


def layer_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a decoder layer was called with (positional or keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def build_like(model: nn.Module, config, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh model of ``model``'s class from ``config``, loaded strictly with ``state``: a shape or
    name that does not fit the new config fails here, not when the folder is reloaded."""
    torch.manual_seed(0)  # initial values are overwritten; seeding keeps the build deterministic
    new = type(model)(config)
    try:
        new.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IncompatibleLayerError(f"{type(model).__name__}: pruned weights do not fit the new config "
                                     f"({str(e).splitlines()[0]})") from None
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    return new.eval()


def param_count(model: nn.Module) -> int:
    """Parameters, counting a tied embedding / lm_head once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def copy_tokenizer_files(source: Path | None, dest: Path, tokenizer) -> list[str]:
    """Copy the source folder's tokenizer files verbatim (export-gguf builds its vocabulary from them);
    fall back to ``save_pretrained`` when the model did not come from a folder."""
    if source is None or not source.is_dir():
        tokenizer.save_pretrained(str(dest))
        return sorted(p.name for p in dest.iterdir() if p.name.startswith(("tokenizer", "special")))
    copied = []
    for f in sorted(source.iterdir()):
        if (f.is_file() and f.name not in _NOT_TOKENIZER and f.suffix not in (".safetensors", ".bin", ".gguf", ".pt")
                and not f.name.endswith(".index.json") and not (dest / f.name).exists()):
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    if not any(n.startswith("tokenizer") for n in copied):
        tokenizer.save_pretrained(str(dest))
    return copied


def attention_and_mlp(layer: nn.Module, where: str) -> tuple[nn.Module, nn.Module]:
    """The Llama-style attention (q/k/v/o_proj) and gated MLP (gate/up/down_proj) of a decoder layer."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    need = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"),
            (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]
    missing = [n for m, n in need if m is None or not isinstance(getattr(m, n, None), nn.Linear)]
    if missing:
        raise IncompatibleLayerError(f"{where}: width pruning needs Llama-style self_attn/mlp projections; "
                                     f"missing {', '.join(missing)}")
    return attn, mlp
