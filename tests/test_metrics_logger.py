"""MetricsLogger on resume: what a killed run logged past the checkpoint is dropped, in the JSONL file
and in TensorBoard's view of the event files."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nemo_ext.observe import MetricsLogger


def _log(logger: MetricsLogger, steps: range, value: float) -> None:
    for step in steps:
        logger.log(step, {"loss": value + step})
    logger.close()


def test_a_resumed_run_replaces_what_the_killed_run_logged_past_its_checkpoint(tmp_path):
    _log(MetricsLogger(tmp_path), range(1, 6), 0.0)  # killed after logging step 5; checkpoint at 3
    _log(MetricsLogger(tmp_path, resume_step=3), range(4, 8), 100.0)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0),
                                                      (6, 106.0), (7, 107.0)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(r["step"], r["loss"]) for r in rows]


def test_resuming_at_the_last_logged_step_keeps_everything(tmp_path):
    _log(MetricsLogger(tmp_path, tensorboard=False), range(1, 4), 0.0)
    _log(MetricsLogger(tmp_path, tensorboard=False, resume_step=3), range(4, 5), 0.0)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
