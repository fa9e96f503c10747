"""Reading a JSON file we were handed, as one typed error naming the file when it is not JSON.

    info = read_json(folder / "quantization.json", ArtifactError)
    task = read_json(path, DataError, unique=True)          # a key given twice is refused too

Every reader of a model folder, an artifact or a user's file (config.json, quantization.json, a baseline, a
task, a tokenizer's JSON) goes through here, so a truncated or corrupt file is always one line, ``PATH:
PROBLEM (json's reason)``, in the error type of the layer that reads it. Whether the file must exist, and
what its absence means, stays with the caller: "not a quantized artifact" and "no baseline yet" are
different messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .manifest_schema import unique_keys


def read_json(path: str | Path, error: type[Exception], *, problem: str = "not valid JSON",
              unique: bool = False) -> Any:
    """The JSON value in ``path`` (UTF-8). ``error(f"{path}: {problem} ({why})")`` when it cannot be decoded;
    ``unique``: a key given twice is such a failure too (json would keep the last one silently). An unreadable
    file (permissions, a directory) is the same one line: the reason in parentheses says which."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=unique_keys if unique else None)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError and unique_keys' refusal are ValueErrors
        raise error(f"{path}: {problem} ({e})") from None
