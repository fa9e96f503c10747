"""Text and multiple-choice data: named bundled sets, files and folders, and fixed scoring windows.

Named texts (shipped in ``compress/data``; see its README for sources and licences):

- ``moby-dick``: the default evaluation text, the last 20% of the book (cut at a paragraph);
- ``moby-dick-calib``: the first 80%, for calibration and distillation. The two never overlap.

Windows (:func:`text_windows`): the text is tokenized once without special tokens and cut into
windows of ``window`` tokens. When the tokenizer puts BOS first by default (Gemma), every window
starts with BOS, which costs one slot: Gemma's perplexity triples without it. Consecutive windows start
``stride`` tokens apart (at most the window's text span, i.e. no overlap); each token is scored once, in the first window whose context reaches it, so
with ``stride == window`` windows do not overlap and the first token of a window (without BOS) is
not scored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from .errors import DataError
from .jsonfile import read_json

DATA_DIR = Path(__file__).resolve().parent / "data"
_MOBY = DATA_DIR / "text" / "moby-dick.txt"
_EVAL_FRACTION = 0.8  # eval text starts at this fraction of the book

TEXTS = {"moby-dick": "eval", "moby-dick-calib": "calib"}
TASKS = {p.stem: p for p in sorted((DATA_DIR / "bigbench").glob("*.json"))}


@dataclasses.dataclass(frozen=True)
class Text:
    name: str
    text: str


def load_text(spec: str | Path) -> Text:
    """A bundled name (``moby-dick``), a text file, or a folder of ``*.txt`` files (sorted, joined)."""
    s = str(spec)
    if s in TEXTS:
        book = _MOBY.read_text(encoding="utf-8")
        cut = book.find("\n\n", int(len(book) * _EVAL_FRACTION))
        text = book[cut:].lstrip() if TEXTS[s] == "eval" else book[:cut]
        return Text(s, text)
    p = Path(s).expanduser()
    if not p.exists():
        raise DataError(f"{s}: text data not found (a file, a folder of .txt files, or one of: {', '.join(TEXTS)})")
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise DataError(f"{p}: folder has no .txt files")
        text = "\n\n".join(_read(f) for f in files)
    else:
        text = _read(p)
    if not text.strip():
        raise DataError(f"{p}: text is empty")
    return Text(str(p), text)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


@dataclasses.dataclass(frozen=True)
class Window:
    input_ids: list[int]  # what the runtime sees (BOS first when used)
    first_target: int  # index into input_ids of the first position whose token is scored


def uses_bos(tokenizer) -> bool:
    """True when the tokenizer puts BOS first by default (Gemma does; SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[:max_tokens] if max_tokens else ids


def text_windows(ids: Sequence[int], *, window: int, stride: int, bos_id: int | None,
                 source: str = "text") -> list[Window]:
    """Cut token ids into scoring windows (see the module docstring for the rules)."""
    span = window - (1 if bos_id is not None else 0)
    if span < 2:
        raise DataError(f"window={window} is too small (need at least {2 + (bos_id is not None)})")
    if stride < 1:
        raise DataError(f"stride={stride} must be >= 1")
    stride = min(stride, span)  # stride == window means "no overlap", also when BOS takes a slot
    n = len(ids)
    if n < span:
        raise DataError(f"{source}: too short, {n} tokens but the window needs at least {span}")
    out: list[Window] = []
    scored_to = 0 if bos_id is not None else 1  # index into ids of the next unscored token
    begin = 0
    while scored_to < n:
        chunk = list(ids[begin:begin + span])
        prefix = [bos_id] if bos_id is not None else []
        first = max(len(prefix) + (scored_to - begin), 1)  # position 0 has nothing before it
        out.append(Window(prefix + chunk, first))
        scored_to = begin + len(chunk)
        begin += stride
    return out


@dataclasses.dataclass(frozen=True)
class MCExample:
    prompt: str
    choices: tuple[str, ...]
    correct: int


@dataclasses.dataclass(frozen=True)
class MCTask:
    name: str
    examples: tuple[MCExample, ...]


CHECK_TOKENS = 128


def check_ids(tokenizer, n_tokens: int = CHECK_TOKENS) -> list[int]:
    """The fixed token ids every comparison of two runtimes runs on (GGUF import, both exports'
    validations): the start of the bundled evaluation text, BOS first where the tokenizer uses one.

    >>> ids = check_ids(tok, 64)   # the same ids for the same tokenizer, every time
    """
    ids = tokenize_text(tokenizer, load_text("moby-dick").text[:4 * n_tokens * 4], max_tokens=n_tokens)
    return ([tokenizer.bos_token_id] if uses_bos(tokenizer) else []) + ids


def load_mc_task(spec: str | Path) -> MCTask:
    """A BIG-bench ``task.json`` (bundled name or path) as prompts plus choices, in BIG-bench's own
    prompt format (task prefix, input/output prefixes, choices appended when the task says so)."""
    s = str(spec)
    path = TASKS.get(s) or Path(s).expanduser()
    if path.is_dir():
        path = path / "task.json"
    if not path.is_file():
        raise DataError(f"{s}: task not found (a BIG-bench task.json, or one of: {', '.join(TASKS)})")
    # a key given twice (an example's answer scores, say) would keep the last silently
    task = read_json(path, DataError, unique=True)
    if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
        raise DataError(f"{path}: no 'examples' list (not a BIG-bench task.json)")
    prefix = task.get("task_prefix", "")
    in_prefix = task.get("example_input_prefix", "\nQ: ")
    out_prefix = task.get("example_output_prefix", "\nA: ")
    choice_prefix = task.get("choice_prefix", "\n  choice: ")
    append = task.get("append_choices_to_input", True)
    examples = []
    for ex in task["examples"]:
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or len(scores) < 2 or "input" not in ex:
            continue
        choices = tuple(str(c) for c in scores)
        values = [float(v) for v in scores.values()]
        best = max(values)
        if values.count(best) != 1:
            continue  # ambiguous gold answer: not scorable as single-answer accuracy
        listed = "".join(choice_prefix + c for c in choices) if append else ""
        prompt = prefix + in_prefix + str(ex["input"]) + listed + out_prefix
        examples.append(MCExample(prompt, choices, values.index(best)))
    if not examples:
        raise DataError(f"{path}: task has no multiple-choice examples (examples with target_scores)")
    return MCTask(task.get("name", path.parent.name if path.name == "task.json" else path.stem), tuple(examples))
