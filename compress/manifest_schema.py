"""What a manifest.json must hold, by type: a manifest edited by hand (``files`` a string, ``report`` a
list) fails in one line where it is read, not as a traceback in whichever command uses the field.

    check_types(manifest, path)                      # ArtifactError naming the field and the value
    json.loads(text, object_pairs_hook=unique_keys)  # ValueError on a key given twice
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import ArtifactError


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A json ``object_pairs_hook`` refusing a key given twice (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} given twice")
        out[k] = v
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# field -> (check, what it must be); a manifest someone edited by hand must fail here, in one line,
# not as a traceback in whichever command reads the field later
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "stage": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "input_id": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "content_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "versions": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                 "an object of version strings"),
    "git_revision": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "wall_time_s": (lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "a number of seconds"),
    "report": (lambda v: isinstance(v, dict), "an object"),
    "files": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _is_num(n) and isinstance(n, int) and n >= 0 for k, n in v.items()),
        "an object of file name -> size in bytes"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "schema": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}


def check_types(m: Any, mf: Path) -> None:
    """ArtifactError naming the first field of the manifest ``m`` (read from ``mf``) of the wrong type."""
    for name, (ok, what) in _FIELD_TYPES.items():
        value = getattr(m, name)
        if not ok(value):
            shown = json.dumps(value, default=str)
            raise ArtifactError(f"{mf}: corrupt manifest, {name!r} must be {what}, got "
                                f"{shown[:60] + '...' if len(shown) > 60 else shown}")
    for name in m.files:  # listed files stay inside the artifact: no absolute paths, no '..'
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or name in ("", "."):
            raise ArtifactError(f"{mf}: corrupt manifest, file {name!r} is not a path inside the artifact")
