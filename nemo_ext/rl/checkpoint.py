"""RL checkpoints: the backend's state plus the schedule state, written atomically; exact resume.

Layout under ``checkpoint.dir`` (default ``<output_dir>/checkpoints``), kept by the project's
``CheckpointManager`` (complete directories only, the newest ``keep_last``): ``step_<global step>/``
holds what ``Backend.save`` writes and ``schedule.json`` (``ScheduleState``: stage, step, epoch,
position in the epoch, active prompts, pass rates, temperature). On resume, what was logged after the
checkpoint is dropped by the stage's ``MetricsLogger`` (those steps run again).
``eval.json`` keeps the held-out accuracies (before RL and after each stage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from nemo_ext.backends.base import Backend
from nemo_ext.checkpoint import CheckpointManager
from nemo_ext.config.rl import RLConfig
from nemo_ext.config.schema import ResumeMode
from nemo_ext.io import atomic_write_json
from nemo_ext.rl.stages import ScheduleState, StageSchedule, stage_lr_schedule

if TYPE_CHECKING:
    from nemo_ext.rl.setup import RLRun

SCHEDULE_FILE = "schedule.json"


def manager(cfg: RLConfig, is_main: bool = True) -> CheckpointManager:
    root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output_dir) / "checkpoints"
    return CheckpointManager(root, cfg.checkpoint.keep_last, is_main=is_main)


class _WithSchedule:
    """The backend's ``save`` plus ``schedule.json`` in the same not-yet-renamed directory, readable
    before the backend loads (the optimizer's schedule must be rebuilt for the stage first)."""

    def __init__(self, backend: Backend, is_main: bool):
        self.backend, self.is_main = backend, is_main

    def save(self, path: Path, extra_state: dict) -> None:
        self.backend.save(path, extra_state)
        if self.is_main:
            atomic_write_json(path / SCHEDULE_FILE, extra_state["schedule"])


def save(run: RLRun) -> Path:
    """Checkpoint at the current global step (replacing one of the same step). Collective."""
    state, main = run.schedule.state, run.share.is_main
    return manager(run.cfg, main).save(_WithSchedule(run.backend, main), state.global_step,
                                       {"schedule": state.to_dict()})


def resume(cfg: RLConfig, backend: Backend, schedule: StageSchedule, is_main: bool = True) -> Path | None:
    """Load the newest checkpoint into ``backend`` and ``schedule`` (resume=auto); None if none.
    Every rank loads."""
    path = manager(cfg, is_main).latest() if cfg.checkpoint.resume is ResumeMode.auto else None
    if path is None:
        return None
    state = ScheduleState.from_dict(json.loads((path / SCHEDULE_FILE).read_text()))
    if state.stage < len(cfg.stages):
        stage = cfg.stages[state.stage]
        backend.reset_optimizer(stage_lr_schedule(stage))
    backend.load(path)
    schedule.state = state
    return path


def read_eval(out: Path) -> dict:
    path = out / "eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_eval(out: Path, results: dict) -> None:
    atomic_write_json(out / "eval.json", results)
