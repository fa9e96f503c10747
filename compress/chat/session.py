"""A chat session over one backend: history, trimming to the context, the turn loop and the REPL.

    session = ChatSession(backend, ChatConfig())
    answer = session.ask("What is the capital of France?", write=print_piece)
    session.stats_line()        # "12 tokens, 140.2 tok/s, RSS 310 MB"

History is rendered through the artifact's own template every turn; when the prompt plus the answer
budget would not fit the context, the oldest user/assistant turns are dropped (the system message
stays), so a long chat keeps going instead of failing.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Callable, TextIO

from ..errors import DataError
from .backends import TurnStats
from .config import ChatConfig

log = logging.getLogger(__name__)
HELP = "commands: /stats  /reset  /exit   (Ctrl-C stops an answer, Ctrl-D exits)"


def valid_text(text: str) -> str:
    """``text`` with bytes that were not UTF-8 replaced by U+FFFD, said on stderr.

    Python hands such bytes over as lone surrogates (argv; stdin read with surrogateescape), which
    every tokenizer refuses with a traceback; a typo in one byte should cost one character, not the turn."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    n = sum("\udc80" <= c <= "\udcff" for c in text)
    log.warning("the message was not valid UTF-8: %d byte(s) replaced with U+FFFD", n)
    return fixed


def rss_mb() -> float:
    """This process's resident memory now (psutil; MB)."""
    import psutil

    return psutil.Process().memory_info().rss / 1e6


@dataclasses.dataclass
class Totals:
    turns: int = 0
    new_tokens: int = 0
    decode_s: float = 0.0
    dropped_turns: int = 0
    peak_rss_mb: float = 0.0


class ChatSession:
    def __init__(self, backend, cfg: ChatConfig) -> None:
        self.backend, self.cfg = backend, cfg
        self.system = [{"role": "system", "content": cfg.system}] if cfg.system else []
        self.turns: list[dict[str, str]] = []
        self.totals = Totals()
        self.prompt_tokens = 0
        # the answer budget shrinks to what the context leaves, never below a useful minimum
        self.max_new_tokens = min(cfg.max_new_tokens, backend.context_length // 2)

    def reset(self) -> None:
        self.turns.clear()
        self.backend.reset()

    def prompt_ids(self, user: str) -> list[int]:
        """The rendered prompt for the history plus ``user``, oldest turns dropped until it fits."""
        turns = self.turns + [{"role": "user", "content": user}]
        limit = self.backend.context_length - self.max_new_tokens
        while True:
            ids = self.backend.encode(self.backend.template.render(self.system + turns))
            if len(ids) <= limit:
                break
            if len(turns) <= 1:
                raise DataError(f"message too long: {len(ids)} prompt tokens, but the context holds {limit} "
                                f"besides the {self.max_new_tokens}-token answer")
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # a user turn and its answer
            self.totals.dropped_turns += 1
        self.turns = turns[:-1]
        return ids

    def ask(self, user: str, write: Callable[[str], None]) -> str:
        """Stream one answer through ``write``; the exchange joins the history when it completes."""
        user = valid_text(user)
        ids = self.prompt_ids(user)
        self.prompt_tokens = len(ids)
        pieces: list[str] = []
        for piece in self.backend.stream(ids, self.max_new_tokens):
            pieces.append(piece)
            write(piece)
        answer = "".join(pieces).strip()
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        last: TurnStats = self.backend.last
        t = self.totals
        t.turns += 1
        t.new_tokens += last.new_tokens
        t.decode_s += max(last.total_s - last.time_to_first_token_s, 0.0)
        t.peak_rss_mb = max(t.peak_rss_mb, rss_mb())
        return answer

    def stats_line(self) -> str:
        s: TurnStats = self.backend.last
        tps = s.decode_tokens_per_s
        speed = f"{tps:.1f} tok/s" if tps == tps else "- tok/s"
        return (f"{s.new_tokens} tokens, {speed}, first token {s.time_to_first_token_s * 1000:.0f} ms "
                f"({s.prompt_tokens - s.reused_tokens} of {s.prompt_tokens} prompt tokens run), RSS {rss_mb():.0f} MB")

    def stats_report(self) -> str:
        t = self.totals
        mean = t.new_tokens / t.decode_s if t.decode_s > 0 else float("nan")
        return "\n".join([
            f"backend      {self.backend.name} ({self.backend.path})",
            f"turns        {t.turns} ({len(self.turns) // 2} in history, {t.dropped_turns} dropped to fit)",
            f"context      {self.prompt_tokens} of {self.backend.context_length} tokens in the last prompt; "
            f"answers up to {self.max_new_tokens}",
            f"generated    {t.new_tokens} tokens, {mean:.1f} tok/s decode on average",
            f"memory       RSS {rss_mb():.0f} MB now, {t.peak_rss_mb:.0f} MB at most after an answer",
        ])


def repl(session: ChatSession, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Read-eval-print loop on a terminal (or any streams, for tests). Returns the exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if hasattr(stdin, "reconfigure"):  # a stray non-UTF-8 byte becomes a surrogate valid_text() replaces
        stdin.reconfigure(errors="surrogateescape")
    interactive = stdin.isatty()

    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    write(f"{session.backend.name}: {session.backend.path}\n{HELP}\n")
    while True:
        try:
            if interactive:
                line = input("you> ")
            else:
                write("you> ")
                line = stdin.readline()
                if not line:
                    raise EOFError
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            write("history cleared\n")
            continue
        if text == "/stats":
            write(session.stats_report() + "\n")
            continue
        if text.startswith("/"):
            write(f"unknown command {text.split()[0]!r}; {HELP}\n")
            continue
        write("bot> ")
        try:
            session.ask(text, write)
        except KeyboardInterrupt:
            write(" [stopped]\n")  # the unfinished answer stays out of the history
            continue
        except DataError as e:
            write(f"\nerror: {e}\n")
            continue
        write(f"\n[{session.stats_line()}]\n")
