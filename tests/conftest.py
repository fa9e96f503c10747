from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("COMPRESS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub

from compress.tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Tiny Llama (vocab 320, hidden 96, 2 layers, 4 heads / 2 KV heads), tokenizer without BOS."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory) -> Path:
    """Tiny Gemma3 (hidden 96, head_dim 24, sliding + full attention), tokenizer that adds BOS."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "gemma3", "gemma3")


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from compress.cli import main

    def _run(*args: str):
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return _run


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Unit tests get an empty model cache; integration tests keep the real one (bundled models)."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def one_thread():
    """Tiny tensors: a second OpenMP thread only spins (10x slower on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
