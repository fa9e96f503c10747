"""Importance matrix for llama.cpp's k-quants, computed from our calibration text in PyTorch.

llama.cpp's quantizer weighs each input column's rounding error by the mean squared activation that
column sees (what its ``llama-imatrix`` tool measures by running the model). Here the PyTorch model of
the artifact runs on the bundled calibration text (``moby-dick-calib``, never the evaluation text), a
hook on every linear sums x**2 per input column, and the means are handed to
``llama_model_quantize`` under the GGUF tensor names.

    >>> imat = importance_matrix(src, spec, tokens=4096)
    >>> imat["blk.0.attn_q.weight"].shape     # one value per input column
    (576,)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from compress.memory import release_memory

from .arch import ArchSpec
from .source import ExportSource

log = logging.getLogger(__name__)

CALIB_TEXT = "moby-dick-calib"
WINDOW = 512


def importance_matrix(src: ExportSource, spec: ArchSpec, *, tokens: int, threads: int = 2) -> dict[str, np.ndarray]:
    import torch

    from compress.data import load_text, tokenize_text, uses_bos

    from .validate import reference_model

    model, tok, _ = reference_model(src)
    torch.set_num_threads(threads)
    ids = tokenize_text(tok, load_text(CALIB_TEXT).text[: tokens * 8], tokens)
    bos = [tok.bos_token_id] if uses_bos(tok) else []
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        hit = spec.rule_for(f"{name}.weight")
        if hit is None:
            continue
        rule, bid = hit
        gguf_name = rule.gguf.format(bid=bid) if bid is not None else rule.gguf

        def hook(_m, inputs, _out, key=gguf_name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)
            counts[key] = counts.get(key, 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    span = WINDOW - len(bos)
    # the decoder alone: the vocabulary projection (262k rows for Gemma) is most of the compute, and
    # its input is the decoder's normed output, summed here directly
    decoder = model.get_decoder()
    head = spec.rule_for("lm_head.weight")[0].gguf
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        # tied: a GGUF has no output.weight, the head's matmul reads token_embd (so llama-imatrix files
        # its statistics there too); named output.weight, llama.cpp quantized the table without them
        emb_name = next(n for n, m in model.named_modules() if m is in_emb)
        head = spec.rule_for(f"{emb_name}.weight")[0].gguf
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), span):
                window = bos + ids[start:start + span]
                h = decoder(input_ids=torch.tensor([window]), use_cache=False).last_hidden_state
                x = h.reshape(-1, h.shape[-1]).double()
                sums[head] = sums.get(head, 0) + (x * x).sum(0)
                counts[head] = counts.get(head, 0) + x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    log.info("importance matrix: %d tensors from %d tokens of %s", len(sums), len(ids), CALIB_TEXT)
    imatrix = {k: (sums[k] / counts[k]).float().numpy() for k in sums}
    # the model and its activations' heap pages go before llama.cpp's quantizer and the validation's
    # own copy of the model: kept, they added 500 MB to the export's peak on SmolLM2
    del model, decoder, sums
    release_memory()
    return imatrix
