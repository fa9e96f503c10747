"""Progress display on stderr (rich): numbered steps for stages, a bar for long loops."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("COMPRESS_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextlib.contextmanager
def steps(title: str, total: int) -> Iterator[Callable[[str], None]]:
    """``with steps("fetch", 3) as step: step("loading") ...``: a spinner naming the current step."""
    if not enabled():
        yield lambda _msg: None
        return
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task(title, total=total)
        count = 0

        def step(msg: str) -> None:
            nonlocal count
            count += 1
            prog.update(task, description=f"{title} [{count}/{total}] {msg}", advance=1)

        yield step


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar with count and ETA over ``items``."""
    if not enabled():
        yield from items
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as prog:
        yield from prog.track(items, total=total, description=description)
