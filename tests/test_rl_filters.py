"""Overlong filtering, dynamic sampling and pass-rate prompt filtering (nemo_ext/rl/filters.py)."""

import pytest
import torch

from nemo_ext.config.rl import PromptFilterConfig, PromptFilterMode
from nemo_ext.rl.advantages import group_advantages
from nemo_ext.rl.filters import (
    DynamicSampling,
    filter_prompts,
    overlong_weights,
    record_pass_rates,
    soft_overlong_penalty,
)


def test_overlong_filtering_keeps_the_baseline_and_zeroes_the_weight():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    truncated = torch.tensor([[False, False, True, False]])
    # the truncated response's 0 still enters the group mean and std
    expected = torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254]])
    assert torch.allclose(group_advantages(rewards, eps=0.0), expected)
    assert overlong_weights(truncated, enabled=True).tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert overlong_weights(truncated, enabled=False).tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_soft_overlong_penalty_is_dapo_eq_13():
    # max 100, cache 20: 0 up to 80, linear to -1 at 100
    lengths = torch.tensor([50, 80, 90, 95, 100, 120])
    expected = torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0, -1.0])
    assert torch.allclose(soft_overlong_penalty(lengths, 100, 20), expected)
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_penalty(lengths, 100, 0)


def fill(pool, target, extra_rounds, enabled=True):
    """Drive ``DynamicSampling`` as the loop does, drawing the next groups of ``pool`` (a group is its
    list of rewards); returns the kept groups, the report and the requests made."""
    sampling, requests = DynamicSampling(target, extra_rounds, lambda g: g, enabled), []
    while (k := sampling.request()) > 0:
        requests.append(k)
        sampling.add(pool[:k])
        del pool[:k]
    return sampling.kept, sampling.report, requests


def test_dynamic_sampling_refills_until_the_target():
    pool = [[1, 1], [0, 1], [0, 0], [1, 0], [1, 1], [0, 1], [1, 0]]
    kept, report, requests = fill(pool, target=3, extra_rounds=2)
    # round 1: 3 drawn, 1 kept (keep rate 1/3) -> ask for min(3, ceil(2 / (1/3))) = 3 more; round 2 keeps 2
    assert kept == [[0, 1], [1, 0], [0, 1]]
    assert requests == [3, 3]
    counts = (report.rounds, report.drawn, report.dropped, report.surplus, report.kept, report.short)
    assert counts == (2, 6, 3, 0, 3, 0)


def test_dynamic_sampling_discards_the_surplus():
    kept, report, _ = fill([[1, 1], [0, 1], [0, 0], [1, 0], [0, 1], [1, 0]], target=3, extra_rounds=2)
    assert kept == [[0, 1], [1, 0], [0, 1]]
    assert (report.drawn, report.dropped, report.surplus) == (6, 2, 1)


def test_dynamic_sampling_is_bounded_and_reports_the_shortfall():
    kept, report, requests = fill([[0, 0]] * 20, target=3, extra_rounds=1)
    assert kept == [] and requests == [3, 3]
    assert (report.rounds, report.drawn, report.dropped, report.short) == (2, 6, 6, 3)


def test_dynamic_sampling_stops_when_prompts_run_out():
    kept, report, _ = fill([[0, 1]], target=3, extra_rounds=5)
    assert kept == [[0, 1]] and report.short == 2 and report.rounds == 6


def test_without_dynamic_sampling_the_first_draw_is_taken_whole():
    kept, report, requests = fill([[1, 1], [0, 1], [0, 0], [1, 0]], target=3, extra_rounds=2, enabled=False)
    assert kept == [[1, 1], [0, 1], [0, 0]] and requests == [3] and report.rounds == 1


def test_pass_rate_prompt_filter():
    stats = {}
    passed = torch.tensor([[1] * 16, [1] * 6 + [0] * 10, [1] * 7 + [0] * 9, [0] * 16])
    record_pass_rates(stats, ["a", "b", "c", "d"], passed)
    assert stats == {"a": (16, 16), "b": (6, 16), "c": (7, 16), "d": (0, 16)}
    ids = ["a", "b", "c", "d", "unseen"]
    assert filter_prompts(ids, stats, PromptFilterConfig()) == (ids, [])
    solved = PromptFilterConfig(mode=PromptFilterMode.solved_by_all)
    assert filter_prompts(ids, stats, solved) == (["b", "c", "d", "unseen"], ["a"])
    # the paper's 6/16: exactly 6/16 stays, 7/16 goes
    hard = PromptFilterConfig(mode=PromptFilterMode.pass_rate, max_pass_rate=6 / 16)
    assert filter_prompts(ids, stats, hard) == (["b", "d", "unseen"], ["a", "c"])
