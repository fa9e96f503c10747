"""Keep llama.cpp's C-level chatter (per-tensor quantizer lines, context set-up notes) off the
terminal: it is collected instead, summarized in the log and quoted in error messages.

    >>> with captured_output() as text:
    ...     llama_cpp.llama_model_quantize(...)
    >>> "falling back" in text()
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Callable, Iterator


@contextlib.contextmanager
def captured_output() -> Iterator[Callable[[], str]]:
    """Collect what llama.cpp's C code prints on stdout/stderr (per-tensor lines) instead of
    letting it through; the text is logged in summary and kept for error messages."""
    saved = [os.dup(1), os.dup(2)]
    py = io.StringIO()  # llama-cpp-python's log callback prints to sys.stderr, which may not be fd 2
    with tempfile.TemporaryFile(mode="w+b") as buf:
        text = ""
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.dup2(buf.fileno(), 1)
            os.dup2(buf.fileno(), 2)
            with contextlib.redirect_stdout(py), contextlib.redirect_stderr(py):
                yield lambda: text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            buf.seek(0)
            text = buf.read().decode("utf-8", "replace") + py.getvalue()
