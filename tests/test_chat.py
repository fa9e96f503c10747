"""compress chat: sandboxed templates, both backends on tiny exports, history trimming, the REPL, profiles."""

from __future__ import annotations

import io
import shutil

import pytest

from compress.chat import ChatConfig, ChatSession, ChatTemplate, ChatTemplateError, open_backend
from compress.chat.session import repl
from compress.errors import DataError

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
HOSTILE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny Llama folder whose tokenizer carries a chat template."""
    from transformers import AutoTokenizer
    from compress.tiny import save_tiny

    # 6 heads of 16: onnxruntime's GroupQueryAttention needs a head width that is a multiple of 16
    folder = save_tiny(tmp_path_factory.mktemp("chat") / "tiny", "llama", num_attention_heads=6, num_key_value_heads=2)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def onnx_export(chat_model, tmp_path_factory):
    from export.onnx import OnnxConfig, export_onnx

    return export_onnx(chat_model, OnnxConfig(precision="fp32", check_tokens=32),
                       tmp_path_factory.mktemp("chat") / "onnx").parent


@pytest.fixture(scope="module")
def gguf_export(chat_model, tmp_path_factory):
    from export.gguf import GGUFConfig, export_gguf

    return export_gguf(chat_model, GGUFConfig(qtype="F32", check_tokens=32), tmp_path_factory.mktemp("chat") / "gguf")


def test_template_renders_chatml_with_generation_prompt():
    t = ChatTemplate(TEMPLATE, where="x")
    text = t.render([{"role": "user", "content": "hi"}])
    assert text == "<s>user\nhi</s>\n<s>assistant\n"


@pytest.mark.parametrize("source,fragment", [
    (HOSTILE, "unsafe chat template"),
    ("{{ messages.append(1) }}", "unsafe chat template"),  # the immutable sandbox refuses mutation
    ("{% for x in %}", "does not parse"),
    ("{{ raise_exception('roles must alternate') }}", "chat template raised: roles must alternate"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}", "renders more"),
])
def test_bad_templates_fail_with_one_typed_line(source, fragment):
    with pytest.raises(ChatTemplateError) as e:
        ChatTemplate(source, where="evil.gguf").render([{"role": "user", "content": "hi"}])
    msg = str(e.value)
    assert fragment in msg and "evil.gguf" in msg and "\n" not in msg


def test_missing_template_falls_back_to_a_plain_transcript():
    t = ChatTemplate(None)
    assert t.builtin
    assert t.render([{"role": "user", "content": "hi"}]).endswith("User: hi\nAssistant:")


@pytest.mark.parametrize("kind", ["onnx", "gguf"])
def test_once_answers_and_reports_speed_and_memory(kind, onnx_export, gguf_export, run_cli):
    art = onnx_export if kind == "onnx" else gguf_export
    rc, out, err = run_cli("chat", art, "--once", "hello there", "--max-new-tokens", "8")
    assert rc == 0, err
    assert out.strip(), "no answer printed"
    assert "tok/s" in err and "RSS" in err and "MB" in err


@pytest.mark.parametrize("kind", ["onnx", "gguf"])
def test_second_turn_reuses_the_cache_of_the_first(kind, onnx_export, gguf_export):
    art = onnx_export if kind == "onnx" else gguf_export
    cfg = ChatConfig(max_new_tokens=6, context=512)
    session = ChatSession(open_backend(art, cfg, threads=1), cfg)
    session.ask("one", lambda s: None)
    first = session.backend.last
    assert first.reused_tokens == 0 and 1 <= first.new_tokens <= 6
    session.ask("two", lambda s: None)
    assert session.backend.last.reused_tokens > 0  # the first turn's prompt was not run again
    assert len(session.turns) == 4


def test_history_is_trimmed_to_the_context_keeping_the_system_message(onnx_export):
    cfg = ChatConfig(max_new_tokens=8, context=96, system="be brief")
    session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
    for i in range(8):
        session.ask(f"message number {i} with some more words in it", lambda s: None)
        assert session.prompt_tokens <= session.backend.context_length - session.max_new_tokens
    assert session.totals.dropped_turns > 0
    assert session.system and session.system[0]["content"] == "be brief"
    assert session.turns[-2]["content"].startswith("message number 7")


def test_a_message_longer_than_the_context_is_a_data_error(onnx_export):
    cfg = ChatConfig(max_new_tokens=8, context=64)
    session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
    with pytest.raises(DataError, match="message too long"):
        session.ask("word " * 200, lambda s: None)


def test_repl_commands(onnx_export):
    cfg = ChatConfig(max_new_tokens=4)
    session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
    out = io.StringIO()
    rc = repl(session, stdin=io.StringIO("hello\n/stats\n/reset\n/bogus\n/exit\nnever read\n"), stdout=out)
    text = out.getvalue()
    assert rc == 0
    assert "tok/s" in text and "RSS" in text  # the line after the answer
    assert "turns        1" in text  # /stats
    assert "history cleared" in text and session.turns == []
    assert "unknown command '/bogus'" in text


def test_profile_over_budget_is_refused_with_both_numbers(onnx_export, tmp_path, run_cli):
    prof = tmp_path / "watch.yaml"
    prof.write_text("name: watch\nthreads: 1\nmemory_budget_mb: 64\nstorage_budget_mb: null\n")
    rc, out, err = run_cli("chat", onnx_export, "--profile", prof, "--once", "hi")
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and "over the 'watch' profile's memory budget of 64 MB" in line
    assert "MB of weights" in line


def test_profile_threads_apply(onnx_export, tmp_path, run_cli):
    prof = tmp_path / "big.yaml"
    prof.write_text("name: big\nthreads: 1\nmemory_budget_mb: 100000\n")
    rc, out, err = run_cli("chat", onnx_export, "--profile", prof, "--once", "hi", "--max-new-tokens", "3")
    assert rc == 0, err


def test_profile_threads_are_clamped_to_the_cores(onnx_export, tmp_path, run_cli, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    prof = tmp_path / "many.yaml"
    prof.write_text("name: many\nthreads: 64\nmemory_budget_mb: 100000\n")
    rc, out, err = run_cli("chat", onnx_export, "--profile", prof, "--once", "hi", "--max-new-tokens", "3")
    assert rc == 0, err
    assert "profile asks for 64 threads; this machine has 2 cores, ran 2" in err


@pytest.mark.parametrize("fmt", ["onnx", "gguf"])
def test_hostile_template_inside_an_export_exits_2(fmt, chat_model, tmp_path, run_cli):
    from export.gguf import GGUFConfig, export_gguf
    from export.onnx import OnnxConfig, export_onnx

    src = tmp_path / "src"
    shutil.copytree(chat_model, src)
    (src / "chat_template.jinja").write_text(HOSTILE)  # exported into the artifact like any template
    if fmt == "onnx":
        art = export_onnx(src, OnnxConfig(precision="fp32", check_tokens=32), tmp_path / "evil").parent
    else:
        art = export_gguf(src, GGUFConfig(qtype="F32", check_tokens=32), tmp_path / "evil")
    rc, out, err = run_cli("chat", art, "--once", "hi")
    assert rc == 2
    assert "unsafe chat template refused by the sandbox" in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_an_edited_template_is_caught_by_the_manifest(onnx_export, tmp_path, run_cli):
    art = tmp_path / "edited"
    shutil.copytree(onnx_export, art)
    (art / "chat_template.jinja").write_text(HOSTILE)
    rc, out, err = run_cli("chat", art, "--once", "hi")
    assert rc == 2 and "corrupt artifact" in err and "chat_template.jinja" in err


def test_a_stage_artifact_that_is_not_an_export_is_refused(chat_model, tmp_path, run_cli):
    from compress.quantize import QuantConfig, run_quantize

    q = run_quantize(str(chat_model), QuantConfig(scheme="int8", eval_tokens=0), tmp_path / "q")
    rc, out, err = run_cli("chat", q, "--once", "hi")
    assert rc == 2 and "'quantize' artifact cannot chat; export it first" in err


def test_ctrl_c_stops_one_answer_and_the_chat_goes_on(onnx_export, monkeypatch):
    cfg = ChatConfig(max_new_tokens=6)
    session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
    cache = session.backend.cache
    real, calls = cache.feed, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-way through the first answer
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cache, "feed", flaky)
    out = io.StringIO()
    rc = repl(session, stdin=io.StringIO("first\nsecond\n/exit\n"), stdout=out)
    assert rc == 0
    assert "[stopped]" in out.getvalue()
    assert [t["content"] for t in session.turns if t["role"] == "user"] == ["second"]
    assert session.backend.last.reused_tokens == 0  # the interrupted cache was dropped, not reused


def test_onnx_chat_gets_its_session_from_the_runtime():
    """#16 point 5: chat runs on runtimes/; no onnxruntime session is built inside compress/chat."""
    import ast
    from pathlib import Path

    banned = {"InferenceSession", "make_session", "OnnxDecoder"}
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "compress" / "chat").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [name]
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n in banned]
    assert found == []


def test_onnx_backend_runs_on_the_runtime_and_its_shared_buffer(onnx_export):
    from runtimes.onnx_runtime import OnnxRuntime

    backend = open_backend(onnx_export, ChatConfig(max_new_tokens=6, context=128), threads=1)
    assert isinstance(backend.runtime, OnnxRuntime) and backend.decoder is backend.runtime.decoder
    assert backend.runtime.tokenizer is None  # the chat's own tokenizer.json reader, not transformers'
    assert backend.decoder.shares_buffer and backend.cache.capacity == backend.context_length == 128


def test_a_two_turn_onnx_chat_allocates_the_cache_once_and_truncates_to_the_common_prefix(onnx_export):
    cfg = ChatConfig(max_new_tokens=6, context=256)
    session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
    backend, decoder = session.backend, session.backend.decoder
    session.ask("one", lambda s: None)
    cache = backend.cache
    session.ask("two", lambda s: None)
    assert backend.last.reused_tokens > 0 and backend.cache is cache and decoder.kv_allocations == 1
    # a prompt that leaves the previous one part-way keeps the shared part (the growing cache started over)
    ids = backend.encode(backend.template.render([{"role": "user", "content": "three four five"}]))
    "".join(backend.stream(ids, 4))
    other = ids[:-3] + [ids[-3] ^ 1] + ids[-2:]  # one token changed, three from the end
    "".join(backend.stream(other, 4))
    assert backend.last.reused_tokens == len(ids) - 3 and decoder.kv_allocations == 1
    # the same prompt again: everything but the last token, which is fed again for its logits
    "".join(backend.stream(other, 4))
    assert backend.last.reused_tokens == len(other) - 1 and decoder.kv_allocations == 1


def test_an_export_without_the_buffer_declaration_chats_on_the_growing_cache_with_the_same_answers(
        onnx_export, monkeypatch):
    import dataclasses

    import runtimes.onnx_runtime as onnx_runtime

    def answers():
        cfg = ChatConfig(max_new_tokens=8, context=256)
        session = ChatSession(open_backend(onnx_export, cfg, threads=1), cfg)
        texts = []
        for q in ("hello there", "and again", "one more"):
            pieces = []
            session.ask(q, pieces.append)
            texts.append((pieces, session.backend.last.reused_tokens))
        return session.backend, texts

    shared, expected = answers()
    real = onnx_runtime.kv_layout
    monkeypatch.setattr(onnx_runtime, "kv_layout", lambda *a, **kw: dataclasses.replace(real(*a, **kw), shared=False))
    growing, got = answers()
    assert shared.cache is not None and growing.cache is None and growing.decoder.kv_allocations == 0
    assert got == expected  # the same pieces, streamed the same way, and the same prefix reused each turn
