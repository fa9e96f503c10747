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


def memory_status() -> dict[str, float]:
    """This process's resident memory now and its high-water mark, in MB, from /proc/self/status.

    ``peak`` (VmHWM), ``rss`` (VmRSS), and the split of the resident set into ``anon`` (RssAnon: heap,
    arenas, KV caches; what a phone must keep) and ``file`` (RssFile: mapped files such as a GGUF that
    llama.cpp mmaps; pages a phone can drop and re-read). Where /proc is missing (macOS), only
    ``peak`` is given, from ``ru_maxrss``.
    """
    import resource
    import sys
    from pathlib import Path

    keys = {"VmHWM:": "peak", "VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in keys:
                out[keys[key]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if "peak" not in out:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak"] = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (the one definition every stage and worker uses).

    Linux: VmHWM of /proc/self/status, the high-water mark of this address space. Not ``ru_maxrss``:
    Linux carries that across fork + exec, so a worker started by a 1 GB parent would report 1 GB
    whatever it loads."""
    return memory_status()["peak"]


def peak_rss_with_children_mb() -> float:
    """The largest resident set of this process or of any child it waited for (bench workers), MB: what
    ``compress run`` prints after each stage. ``ru_maxrss`` is the only record a finished child leaves."""
    import resource
    import sys

    scale = 1 / (1 << 20) if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return max(peak_rss_mb(), children)

