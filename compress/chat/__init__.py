"""``compress chat``: talk to a compressed model on the device (GGUF via llama.cpp, ONNX via onnxruntime).

    from compress.chat import ChatConfig, ChatSession, open_backend
    session = ChatSession(open_backend("runs/demo/export-gguf-q4km", ChatConfig(), threads=2), ChatConfig())
    session.ask("What is the capital of France?", write=print)
"""

from .backends import LlamaCppBackend, OnnxBackend, TurnStats, open_backend, resolve_chat_artifact
from .config import ChatConfig
from .session import ChatSession, repl
from .template import ChatTemplate, ChatTemplateError

__all__ = ["ChatConfig", "ChatSession", "ChatTemplate", "ChatTemplateError", "LlamaCppBackend", "OnnxBackend",
           "TurnStats", "open_backend", "repl", "resolve_chat_artifact"]
