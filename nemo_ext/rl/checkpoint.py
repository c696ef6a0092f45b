"""RL checkpoints: the backend's state plus the schedule state, written atomically; exact resume.

Layout under ``checkpoint.dir`` (default ``<output_dir>/checkpoints``): ``step_<global step>/`` holds
what ``Backend.save`` writes and ``schedule.json`` (``ScheduleState``: stage, step, epoch, position in
the epoch, active prompts, pass rates, temperature). A directory appears only complete (temp dir +
rename), so the newest one is always loadable. On resume, rows of ``logs/*/metrics.jsonl`` logged
after the checkpoint are dropped, since those steps run again. ``eval.json`` keeps the held-out
accuracies (before RL and after each stage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from nemo_ext.backends.base import Backend
from nemo_ext.config.rl import RLConfig
from nemo_ext.config.schema import ResumeMode
from nemo_ext.io import atomic_dir, atomic_write_json, atomic_write_text
from nemo_ext.rl.stages import ScheduleState, StageSchedule

if TYPE_CHECKING:
    from nemo_ext.rl.setup import RLRun

SCHEDULE_FILE = "schedule.json"


def checkpoint_dir(cfg: RLConfig) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output_dir) / "checkpoints"


def latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint (highest global step), or None."""
    done = [p for p in ckpt_dir.glob("step_*") if (p / SCHEDULE_FILE).exists()]
    return max(done, key=lambda p: int(p.name.removeprefix("step_")), default=None)


def save(run: RLRun) -> Path:
    """Write ``step_<global step>`` (replacing one of the same step) and keep the newest keep_last."""
    state = run.schedule.state
    ckpt_dir = checkpoint_dir(run.cfg)
    path = ckpt_dir / f"step_{state.global_step:07d}"
    with atomic_dir(path) as tmp:
        run.backend.save(tmp, extra_state={"schedule": state.to_dict()})
        atomic_write_json(tmp / SCHEDULE_FILE, state.to_dict())
    done = sorted((p for p in ckpt_dir.glob("step_*") if (p / SCHEDULE_FILE).exists()),
                  key=lambda p: int(p.name.removeprefix("step_")))
    for old in done[:-max(1, run.cfg.checkpoint.keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def resume(cfg: RLConfig, backend: Backend, schedule: StageSchedule) -> Path | None:
    """Load the newest checkpoint into ``backend`` and ``schedule`` (resume=auto); None if none."""
    path = latest(checkpoint_dir(cfg)) if cfg.checkpoint.resume is ResumeMode.auto else None
    if path is None:
        return None
    state = ScheduleState.from_dict(json.loads((path / SCHEDULE_FILE).read_text()))
    if state.stage < len(cfg.stages):  # the scheduler's shape must match before its state loads
        stage = cfg.stages[state.stage]
        backend.reset_optimizer(stage.lr, stage.warmup_steps, stage.steps or 1)
    backend.load(path)
    schedule.state = state
    drop_metrics_after(Path(cfg.output_dir) / "logs", state.global_step)
    return path


def drop_metrics_after(log_dir: Path, global_step: int) -> None:
    """Rewrite each ``metrics.jsonl`` under ``log_dir`` without rows of steps after ``global_step``."""
    for path in log_dir.glob("*/metrics.jsonl"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= global_step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_eval(out: Path) -> dict:
    path = out / "eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_eval(out: Path, results: dict) -> None:
    atomic_write_json(out / "eval.json", results)
