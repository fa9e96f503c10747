"""PyTorch runtime: the reference every other runtime is compared with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .base import DeviceProfile, Generation, usable_threads
from .sizes import torch_kv_bytes_per_position, torch_weight_bytes


class TorchRuntime:
    name = "pytorch"

    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.loaded: Any = None

    def load(self, artifact: str | Path, profile: DeviceProfile, *, n_ctx: int | None = None, verify: bool = True,
             allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
        """Any model argument :func:`compress.models.load_model` takes; ``n_ctx`` is not needed (the cache
        grows as it goes); ``verify``: the re-check of a GGUF import against llama.cpp's stored perplexity."""
        from compress.models import load_model

        torch.set_num_threads(usable_threads(profile.threads))
        self.use(load_model(artifact, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, verify=verify))

    def use(self, loaded) -> "TorchRuntime":
        """Wrap an already loaded model (a :class:`compress.models.LoadedModel`)."""
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        return self

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
        out = self.model(torch.tensor([list(token_ids)], dtype=torch.long), use_cache=False,
                         logits_to_keep=last or 0)  # 0 keeps every position
        return out.logits[0].float().numpy()

    @torch.inference_mode()
    def generate(self, token_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> Generation:
        """Greedy decoding with the KV cache, timed: the first token comes out of prefill."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        t0 = time.perf_counter()
        out = self.model(ids, use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        ttft = time.perf_counter() - t0
        new = [nxt]
        past = out.past_key_values
        while len(new) < max_new_tokens and nxt not in stop_ids:
            out = self.model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            new.append(nxt)
        return Generation(list(token_ids), new, ttft, time.perf_counter() - t0)

    def version(self) -> str:
        return torch.__version__

    def weight_bytes(self) -> float:
        return torch_weight_bytes(self.model)

    def kv_bytes_per_position(self) -> float:
        return torch_kv_bytes_per_position(self.model)
