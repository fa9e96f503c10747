"""Giving freed memory back to the OS between the big steps of a stage.

    del model
    release_memory()   # before loading the next big thing (llama.cpp, another stage's model)

Python frees a transformers model only when the garbage collector breaks its reference cycles, and
glibc keeps freed heap pages mapped; without both, the next allocation's peak stacks on the last one's.
"""

from __future__ import annotations


def release_memory() -> None:
    """gc.collect, then :func:`trim_heap`."""
    import gc

    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim: return freed heap pages to the OS (a no-op where libc is not glibc: macOS,
    musl). Cheap enough to call once per decoder layer."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
