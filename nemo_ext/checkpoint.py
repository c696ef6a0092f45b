"""Step checkpoints: ``<dir>/step_00000100/``, written into a temporary sibling and renamed into place
by rank 0 once every rank has finished, so a killed job never leaves a half checkpoint where
``resume=auto`` would find it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from nemo_ext.backends.base import Backend
from nemo_ext.dist import barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int, is_main: bool):
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_main = is_main

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def save(self, backend: Backend, step: int, extra_state: dict) -> Path:
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".step_{step:08d}.partial"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        backend.save(tmp, extra_state)
        barrier()
        if self.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[:-self.keep_last] if self.keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final
