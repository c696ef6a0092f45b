"""The stage schedule of one RL run: which stage, which step, which prompts next; resumable exactly.

AceReason-Nemotron (arXiv 2505.16400, 2506.13284; ../shared/PAPER.md "math stages", "code stages",
"final stage", "prompt filter" rows) trains in stages of growing response length, each starting
from the previous stage's weights, with prompts filtered by pass rate between epochs. Here one run
walks the whole list: a stage ends at the first of its step budget, its epoch budget, its ``until``
condition (a logged metric's moving average reaching a value) or running out of prompts.

Prompts are identified by string ids. Each epoch visits the stage's active prompts in an order fixed
by (seed, stage, epoch); the last batch of an epoch is short rather than spilling into the next, so
the prompt filter sees every rollout of an epoch before the next one starts. The whole schedule state
is a small JSON-able dict stored with each checkpoint: resuming replays nothing and skips nothing.
Left out: mixing math and code prompts within one stage (the paper runs them as separate stages).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.config.rl import StageConfig
from nemo_ext.rl.filters import filter_prompts, record_pass_rates


@dataclass
class ScheduleState:
    """Everything needed to continue a run mid-stage (stored as JSON with each checkpoint)."""

    stage: int = 0
    step: int = 0  # optimizer steps done in this stage
    global_step: int = 0  # optimizer steps done in the run
    epoch: int = 0  # epochs of this stage started so far
    cursor: int = 0  # prompts of the current epoch's order already handed out
    active: list[str] | None = None  # this stage's prompts after filtering; None = stage not begun
    dropped: int = 0  # prompts this stage's filter removed so far
    pass_stats: dict[str, list[int]] = field(default_factory=dict)  # id -> [passed, total], latest
    history: list[float] = field(default_factory=list)  # the `until` metric, last `window` steps
    temperature: dict | None = None  # TemperatureController.state_dict()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping) -> ScheduleState:
        return cls(**state)


def stage_lr_schedule(stage: StageConfig) -> LRSchedule:
    """A stage's learning rate: a linear warmup of ``warmup_steps`` to ``lr``, then constant (each
    stage starts a fresh optimizer on it)."""
    return LRSchedule.constant(stage.lr, stage.warmup_steps)


def epoch_order(prompt_ids: Sequence[str], seed: int, stage: int, epoch: int) -> list[str]:
    """The order of one epoch: a permutation fixed by (seed, stage, epoch)."""
    order = list(prompt_ids)
    random.Random(f"{seed}-{stage}-{epoch}").shuffle(order)
    return order


class StageSchedule:
    """Walks ``stages`` in order. The loop calls ``begin_stage`` once per stage (again after a resume:
    then it keeps the stored prompt set), ``take`` to get prompts, ``record_pass_rates`` after scoring,
    ``end_step`` after each update, ``done_reason`` to test the end, and ``next_stage``."""

    def __init__(self, stages: Sequence[StageConfig], seed: int, state: ScheduleState | None = None):
        if not stages:
            raise ValueError("the RL config needs at least one stage")
        self.stages, self.seed = list(stages), seed
        self.state = state if state is not None else ScheduleState()
        self._order: list[str] | None = None

    @property
    def finished(self) -> bool:
        return self.state.stage >= len(self.stages)

    @property
    def stage(self) -> StageConfig:
        return self.stages[self.state.stage]

    def begin_stage(self, prompt_ids: Sequence[str]) -> None:
        """Set this stage's prompts (``prompt_ids`` of its data, filtered by the pass rates known so
        far); does nothing if the stage already began (resume)."""
        if self.state.active is not None:
            return
        if len(set(prompt_ids)) != len(prompt_ids):
            raise ValueError(f"stage {self.stage.name!r}: prompt ids are not unique")
        self.state.active, dropped = self._filter(prompt_ids)
        self.state.dropped += len(dropped)

    def take(self, k: int) -> list[str]:
        """Up to ``k`` prompt ids: fewer at the end of an epoch, none once the epoch budget is spent
        or the filter has removed every prompt."""
        st = self.state
        if st.active is None:
            raise RuntimeError("take() before begin_stage()")
        if st.epoch == 0 or st.cursor >= len(st.active):
            if self.stage.epochs is not None and st.epoch >= self.stage.epochs:
                return []
            if st.epoch > 0:  # between epochs: drop prompts by the pass rates of the epoch just done
                st.active, dropped = self._filter(st.active)
                st.dropped += len(dropped)
            st.epoch, st.cursor, self._order = st.epoch + 1, 0, None
        if self._order is None:
            self._order = epoch_order(st.active, self.seed, st.stage, st.epoch)
        ids = self._order[st.cursor:st.cursor + k]
        st.cursor += len(ids)
        return ids

    def _filter(self, prompt_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        stats = {k: (v[0], v[1]) for k, v in self.state.pass_stats.items()}
        return filter_prompts(prompt_ids, stats, self.stage.prompt_filter)

    def record_pass_rates(self, prompt_ids: Sequence[str], passed_NG: torch.Tensor) -> None:
        stats: dict[str, tuple[int, int]] = {}
        record_pass_rates(stats, prompt_ids, passed_NG)
        self.state.pass_stats.update({k: list(v) for k, v in stats.items()})

    def end_step(self, metrics: Mapping[str, float]) -> None:
        """Count an optimizer step; keep the ``until`` metric's recent values."""
        st, until = self.state, self.stage.until
        st.step += 1
        st.global_step += 1
        if until is not None:
            if until.metric not in metrics:
                raise KeyError(f"stage {self.stage.name!r}: until.metric {until.metric!r} is not a logged "
                               f"metric; logged: {sorted(metrics)}")
            st.history = (st.history + [float(metrics[until.metric])])[-until.window:]

    def done_reason(self) -> str | None:
        """Why the current stage is over ("steps", "epochs", "until", "no prompts"), or None."""
        st, cfg = self.state, self.stage
        if st.active is not None and not st.active:
            return "no prompts"
        if cfg.steps is not None and st.step >= cfg.steps:
            return "steps"
        if cfg.epochs is not None and st.epoch >= cfg.epochs and st.cursor >= len(st.active or ()):
            return "epochs"
        until = cfg.until
        full = until is not None and len(st.history) == until.window
        if full and sum(st.history) / until.window >= until.above:
            return "until"
        return None

    def next_stage(self) -> None:
        """Move to the next stage (pass-rate statistics carry over; everything else restarts)."""
        self.state = ScheduleState(
            stage=self.state.stage + 1, global_step=self.state.global_step, pass_stats=self.state.pass_stats
        )
        self._order = None
