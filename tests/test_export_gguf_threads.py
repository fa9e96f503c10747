"""A GGUF export config asking for more threads than the machine has is clamped, not handed to llama.cpp."""

from __future__ import annotations

import os


def test_export_config_threads_are_clamped_to_the_cores(tiny_llama_dir, tmp_path, one_thread, monkeypatch):
    from export.gguf import GGUFConfig, export_gguf
    from export.gguf import export as gguf_export

    seen = []
    real = gguf_export.validate_gguf

    def spy(*a, **kw):
        seen.append(kw["threads"])
        return real(*a, **kw)

    monkeypatch.setattr(gguf_export, "validate_gguf", spy)
    path = export_gguf(str(tiny_llama_dir), GGUFConfig(qtype="F32", threads=100000, check_tokens=16), tmp_path / "f32")
    assert path.is_file() and seen == [os.cpu_count()]
