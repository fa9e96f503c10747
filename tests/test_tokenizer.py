"""The ONNX runtimes read tokenizer.json with the ``tokenizers`` library alone (issue #14: transformers imports torch,
+250 MiB in the measured process): the same ids as transformers' AutoTokenizer, special tokens and BOS included,
read only when asked for, and a bench worker of an ONNX or llama.cpp row imports neither torch nor transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compress.data import check_ids, load_text, uses_bos
from compress.errors import ArtifactError
from compress.tiny import build_tokenizer
from compress.tokenizer import ExportTokenizer, load_export_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ("Hello world", "", " leading space", "a", "<s> inside </s>", "x<|end|>y", "\n\n  \t",
         "Größe café 東京は大きい def f(x):\n\treturn x**2  # 12345")


def same_as_transformers(folder: Path, texts=TEXTS) -> None:
    """Every text's ids with and without special tokens, decoding, BOS and the check ids equal AutoTokenizer's."""
    from transformers import AutoTokenizer

    want, got = AutoTokenizer.from_pretrained(str(folder)), load_export_tokenizer(folder)
    assert isinstance(got, ExportTokenizer)
    for text in texts:
        for special in (True, False):
            ids = want(text, add_special_tokens=special)["input_ids"]
            assert got(text, add_special_tokens=special).input_ids == ids, (text, special)
            assert got(text, add_special_tokens=special)["input_ids"] == got.encode(text, special) == ids
        ids = want(text)["input_ids"]
        assert got.decode(ids) == want.decode(ids, skip_special_tokens=True)
        assert got.decode(ids, skip_special_tokens=False) == want.decode(ids)
    assert (got.bos_token_id, got.eos_token_id, got.unk_token_id) == \
        (want.bos_token_id, want.eos_token_id, want.unk_token_id)
    assert uses_bos(got) == uses_bos(want) == got.adds_bos
    assert check_ids(got, 256) == check_ids(want, 256)


@pytest.mark.parametrize("kind", ["gpt2", "llama-bpe", "qwen2", "spm", "spm-gemma"])
@pytest.mark.parametrize("add_bos", [True, False])
def test_tokenizer_json_gives_transformers_ids_on_every_tiny_tokenizer(kind, add_bos, tmp_path):
    build_tokenizer(add_bos, ("<|end|>",), kind=kind, vocab=512).save_pretrained(tmp_path)
    same_as_transformers(tmp_path, TEXTS + (load_text("moby-dick").text[:20_000],))


def test_a_folder_without_a_tokenizer_is_refused_and_a_broken_file_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="holds no tokenizer"):
        load_export_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ArtifactError, match="tokenizer.json: cannot be read"):
        load_export_tokenizer(tmp_path)


def _tiny_export(root: Path) -> Path:
    from compress.tiny import save_tiny
    from export.onnx import OnnxConfig, export_onnx

    src = save_tiny(root / "src", "gemma3", head_dim=32)  # GroupQueryAttention takes multiples of 16
    return export_onnx(str(src), OnnxConfig(precision="fp32"), root / "onnx").parent


def test_the_onnx_runtimes_read_the_tokenizer_only_when_asked_and_without_transformers(tmp_path, monkeypatch):
    import compress.tokenizer
    from runtimes import DeviceProfile, get_runtime

    folder = _tiny_export(tmp_path)
    reads = []
    load = compress.tokenizer.ExportTokenizer.__init__
    monkeypatch.setattr(compress.tokenizer.ExportTokenizer, "__init__", lambda self, f: reads.append(f) or load(self, f))
    for name in ("onnxruntime", "onnxruntime-genai"):
        rt = get_runtime(name)
        rt.load(folder, DeviceProfile(threads=1))
        assert reads == []  # loading runs token ids only
        assert rt.tokenizer("It was the whale")["input_ids"][0] == 1  # Gemma's BOS, as AutoTokenizer puts it
        assert rt.tokenizer is rt.tokenizer and reads == [folder]
        reads.clear()
    rt = get_runtime("onnxruntime")
    rt.load(folder, DeviceProfile(threads=1), tokenizer=False)
    assert rt.tokenizer is None and reads == []


_WORKER = textwrap.dedent("""
    import json, sys
    from compress.harness import worker

    spec = {{"runtime": {runtime!r}, "path": {path!r}, "profile": {{"name": "t", "threads": 1}},
             "prompt_ids": [1, 5, 17, 42, 99], "new_tokens": 4, "warmup": 0, "repetitions": 1}}
    result = worker.measure(spec)
    print(json.dumps({{"new_ids": result["new_ids"],
                       "imported": sorted(m for m in ("torch", "transformers") if m in sys.modules)}}))
""")


def test_a_bench_worker_of_an_onnx_or_llama_cpp_row_imports_neither_torch_nor_transformers(tmp_path):
    from compress.tiny import save_tiny
    from export.gguf import GGUFConfig, export_gguf

    onnx_folder = _tiny_export(tmp_path)
    gguf = export_gguf(str(save_tiny(tmp_path / "llama", "llama")), GGUFConfig(qtype="F32"), tmp_path / "gguf")
    for runtime, path in (("onnxruntime", onnx_folder), ("onnxruntime-genai", onnx_folder),
                          ("llama.cpp", gguf.parent)):
        out = subprocess.run([sys.executable, "-c", _WORKER.format(runtime=runtime, path=str(path))],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert len(result["new_ids"]) >= 1 and result["imported"] == [], (runtime, result)
