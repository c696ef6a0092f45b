"""What an RL checkpoint holds and how a run saves and resumes it: the backend's state plus the
stage schedule's, written atomically; exact resume.

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

from nemo_ext.backends.base import Backend
from nemo_ext.checkpoint import CheckpointManager
from nemo_ext.config.schema import CheckpointConfig, ResumeMode
from nemo_ext.io import atomic_write_json
from nemo_ext.rl.stages import ScheduleState, StageSchedule, stage_lr_schedule

SCHEDULE_FILE = "schedule.json"


class _WithSchedule:
    """The backend's ``save`` plus ``schedule.json`` in the same not-yet-renamed directory, readable
    before the backend loads (the optimizer's schedule must be rebuilt for the stage first)."""

    def __init__(self, backend: Backend, is_main: bool):
        self.backend, self.is_main = backend, is_main

    def save(self, path: Path, extra_state: dict) -> None:
        self.backend.save(path, extra_state)
        if self.is_main:
            atomic_write_json(path / SCHEDULE_FILE, extra_state["schedule"])


class RunCheckpoints:
    """Checkpoints of one run: the ``checkpoint`` section, the policy backend and the stage schedule
    it saves and restores together."""

    def __init__(self, cfg: CheckpointConfig, output_dir: Path, backend: Backend, schedule: StageSchedule,
                 is_main: bool = True):
        root = Path(cfg.dir) if cfg.dir else output_dir / "checkpoints"
        self.manager = CheckpointManager(root, cfg.keep_last, is_main=is_main)
        self.cfg, self.backend, self.schedule, self.is_main = cfg, backend, schedule, is_main

    def due(self) -> bool:
        """Whether the global step just done is one of ``save_every``'s."""
        return bool(self.cfg.save_every) and self.schedule.state.global_step % self.cfg.save_every == 0

    def save(self) -> Path:
        """Checkpoint at the current global step (replacing one of the same step). Collective."""
        state = self.schedule.state
        return self.manager.save(_WithSchedule(self.backend, self.is_main), state.global_step,
                                 {"schedule": state.to_dict()})

    def resume(self) -> Path | None:
        """Load the newest checkpoint into the backend and the schedule (resume=auto); None if none.
        Every rank loads."""
        path = self.manager.latest() if self.cfg.resume is ResumeMode.auto else None
        if path is None:
            return None
        state = ScheduleState.from_dict(json.loads((path / SCHEDULE_FILE).read_text()))
        if state.stage < len(self.schedule.stages):
            self.backend.reset_optimizer(stage_lr_schedule(self.schedule.stages[state.stage]))
        self.backend.load(path)
        self.schedule.state = state
        return path


def read_eval(out: Path) -> dict:
    path = out / "eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_eval(out: Path, results: dict) -> None:
    atomic_write_json(out / "eval.json", results)
