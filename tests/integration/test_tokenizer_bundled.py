"""SmolLM2's and Gemma3's tokenizer.json through ``tokenizers`` alone give transformers' ids (issue #14): what the
ONNX runtimes read instead of AutoTokenizer, on the bundled text, chat markers and special tokens.

Uses the real cache (~/.cache/compress, or $COMPRESS_CACHE): the first run fetches the models once.
"""

from __future__ import annotations

import pytest

from compress.data import load_text
from compress.fetch import ensure_fetched
from test_tokenizer import TEXTS, same_as_transformers

pytestmark = pytest.mark.integration
CHAT = ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<bos><start_of_turn>user\nHi<end_of_turn>",
        "<eos>", "<pad><unk><mask>")


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_the_bundled_tokenizer_json_gives_transformers_ids(model):
    same_as_transformers(ensure_fetched(model), TEXTS + CHAT + (load_text("moby-dick").text[:50_000],))
