"""Training checkpoints, written atomically: a kill at any moment leaves the previous one intact.

    ck = CheckpointDir(Path("out/student.checkpoints"))
    ck.save(step, state)                       # state: model/optimizer/scheduler/rng/history dicts
    step, state = ck.load_latest()

Each checkpoint is ``step-NNNNNN/state.pt``, built under a ``.tmp-*`` name and renamed into place
(rename is atomic on one filesystem); ``latest`` names the newest one and is replaced atomically too.
Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"step-(\d{6,})")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


class CheckpointDir:
    def __init__(self, path: Path, keep: int = 2):
        self.path, self.keep = Path(path).absolute(), keep

    def check_writable(self) -> None:
        """Create the directory and prove a file can be written there, before any training."""
        probe = self.path / f".probe-{uuid.uuid4().hex[:8]}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise ArtifactError(f"{self.path}: checkpoint directory is not writable ({e.strerror or e})") from None

    def steps(self) -> list[int]:
        if not self.path.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.path.iterdir()
                      if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name)) and (p / "state.pt").is_file())

    def save(self, step: int, state: dict[str, Any]) -> Path:
        final = self.path / f"step-{step:06d}"
        tmp = self.path / f".tmp-{step:06d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            with open(tmp / "state.pt", "wb") as fh:
                torch.save({**state, "step": step}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = self.path / ".latest.partial"
        pointer.write_text(final.name)
        os.replace(pointer, self.path / "latest")
        for old in self.steps()[:-self.keep]:
            shutil.rmtree(self.path / f"step-{old:06d}", ignore_errors=True)
        return final

    def load_latest(self) -> tuple[int, dict[str, Any]] | None:
        steps = self.steps()
        if not steps:
            return None
        path = self.path / f"step-{steps[-1]:06d}" / "state.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise ArtifactError(f"{path}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
        return int(state["step"]), state

    def clear(self) -> None:
        for s in self.steps():
            shutil.rmtree(self.path / f"step-{s:06d}", ignore_errors=True)
        (self.path / "latest").unlink(missing_ok=True)
        for p in self.path.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
