"""The stage schedule and its exact resume (nemo_ext/rl/stages.py), and the RL config checks."""

import json

import pytest
import torch

from nemo_ext.config.rl import (
    PromptFilterConfig,
    PromptFilterMode,
    RLConfig,
    StageConfig,
    UntilConfig,
    validate_rl_config,
)
from nemo_ext.rl.stages import ScheduleState, StageSchedule, epoch_order

IDS = ["a", "b", "c", "d", "e"]


def stages():
    return [
        StageConfig(name="s0", epochs=2,
                    prompt_filter=PromptFilterConfig(mode=PromptFilterMode.solved_by_all)),
        StageConfig(name="s1", steps=2, prompt_filter=PromptFilterConfig(mode=PromptFilterMode.pass_rate,
                                                                         max_pass_rate=0.5)),
    ]


def test_epochs_end_with_a_short_batch_and_filter_between_epochs():
    sched = StageSchedule(stages(), seed=7)
    sched.begin_stage(IDS)
    order = epoch_order(IDS, 7, 0, 1)
    assert sorted(order) == IDS and order != IDS  # a permutation, fixed by (seed, stage, epoch)
    assert [sched.take(2), sched.take(2), sched.take(2)] == [order[:2], order[2:4], order[4:]]
    sched.record_pass_rates(["a", "b"], torch.tensor([[1, 1], [1, 0]]))  # "a" solved by every rollout
    assert sched.done_reason() is None  # epoch 1 of 2
    second = sched.take(5)  # epoch 2 starts without "a"
    assert second == epoch_order(["b", "c", "d", "e"], 7, 0, 2)
    assert sched.state.dropped == 1
    assert sched.done_reason() == "epochs" and sched.take(5) == []


def test_next_stage_carries_pass_rates_and_filters_at_stage_start():
    sched = StageSchedule(stages(), seed=7)
    sched.begin_stage(IDS)
    sched.take(5)
    sched.record_pass_rates(["a", "b", "c"], torch.tensor([[1, 1], [1, 0], [0, 0]]))
    sched.end_step({})
    sched.next_stage()
    assert (sched.state.stage, sched.state.step, sched.state.global_step) == (1, 0, 1)
    sched.begin_stage(IDS)  # pass rate > 0.5 goes: only "a" (1.0); "b" is exactly 0.5
    assert sorted(sched.state.active) == ["b", "c", "d", "e"] and sched.state.dropped == 1
    for _ in range(2):
        sched.take(2)
        sched.end_step({})
    assert sched.done_reason() == "steps"
    sched.next_stage()
    assert sched.finished


def test_until_condition_uses_a_moving_average():
    cfg = StageConfig(name="u", steps=100, until=UntilConfig(metric="reward/mean", above=0.5, window=2))
    sched = StageSchedule([cfg], seed=0)
    sched.begin_stage(IDS)
    for value, expected in [(0.9, None), (0.0, None), (0.4, None), (0.7, "until")]:
        sched.end_step({"reward/mean": value})
        assert sched.done_reason() == expected
    with pytest.raises(KeyError, match="until.metric"):
        sched.end_step({"reward": 1.0})


def test_resume_mid_stage_continues_exactly():
    def run(resume_after):
        sched, taken = StageSchedule(stages(), seed=3), []
        for step in range(12):
            if sched.finished:
                break
            if step == resume_after:  # a fresh process reading the checkpointed state as JSON
                sched = StageSchedule(stages(), seed=3, state=ScheduleState.from_dict(
                    json.loads(json.dumps(sched.state.to_dict()))))
            sched.begin_stage(IDS)
            ids = sched.take(2)
            taken.append(ids)
            sched.record_pass_rates(ids, torch.tensor([[1, int(i in "ab")] for i in ids]))
            sched.end_step({})
            if sched.done_reason():
                sched.next_stage()
        return taken

    reference = run(resume_after=-1)
    assert len(reference) > 4
    for k in range(1, len(reference)):
        assert run(resume_after=k) == reference


def test_config_checks_name_the_key():
    with pytest.raises(ValueError, match=r"stages\[1\].group_size"):
        validate_rl_config(RLConfig(stages=[StageConfig(name="x", steps=1), StageConfig(name="y", steps=1,
                                                                                          group_size=1)]))
    with pytest.raises(ValueError, match=r"stages\[0\].steps/epochs"):
        validate_rl_config(RLConfig(stages=[StageConfig(name="x")]))
    with pytest.raises(ValueError, match="unique names"):
        validate_rl_config(RLConfig(stages=[StageConfig(name="x", steps=1), StageConfig(name="x", steps=1)]))
    assert validate_rl_config(RLConfig()).stages[0].steps == 10
