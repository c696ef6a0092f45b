"""What enters a GRPO step: overlong filtering, dynamic sampling, pass-rate prompt filtering.

- Overlong filtering (AceReason-Nemotron 1.0, arXiv 2505.16400; ../shared/PAPER.md "overlong
  filtering" row): a response cut off by the length limit keeps its reward (0) in its group's
  baseline but gets zero loss weight, so the model is not taught that long reasoning is wrong.
- Soft overlong punishment (DAPO, arXiv 2503.14476, eq. 13), optional: a reward penalty that grows
  linearly over the last ``cache_len`` tokens of the budget and is -1 at the limit.
- Dynamic sampling (DAPO): groups whose rewards are all equal have zero advantage and only dilute
  the batch; drop them and draw more prompts, a bounded number of times, reporting what happened.
- Prompt filtering between epochs (AceReason: drop problems every rollout solved; at 24K/32K keep
  prompts whose pass rate is at most 6/16).

Pure functions on tensors and plain data; the loop does the drawing and logging. Left out: DAPO's
token-level length shaping beyond eq. 13, and filtering by difficulty labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from nemo_ext.config.rl import PromptFilterConfig, PromptFilterMode
from nemo_ext.rl.advantages import uniform_groups

G = TypeVar("G")


def overlong_weights(truncated_NG: torch.Tensor, enabled: bool) -> torch.Tensor:
    """[N, G] float32 loss weight per response: 0 for truncated ones when filtering is on, else 1."""
    weights = torch.ones(truncated_NG.shape, dtype=torch.float32)
    return weights.masked_fill(truncated_NG.bool(), 0.0) if enabled else weights


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's length penalty (added to the reward), same shape as ``lengths`` (response tokens).

    0 up to max_len - cache_len, then falling linearly to -1 at max_len, -1 beyond.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"soft overlong punishment needs 0 < cache_len <= max_len, got {cache_len}, "
                         f"{max_len}")
    over = (lengths.to(torch.float32) - (max_len - cache_len)) / cache_len
    return -over.clamp(0.0, 1.0)


@dataclass
class DynamicSamplingReport:
    """What dynamic sampling did in one step (all counts are prompt groups)."""

    target: int
    rounds: int = 0  # draws made, the first included
    drawn: int = 0
    dropped: int = 0  # all-equal rewards
    surplus: int = 0  # informative but beyond the target, discarded
    kept: int = 0

    @property
    def short(self) -> int:
        """Groups the step misses after the last allowed draw (0 when the target is met)."""
        return self.target - self.kept


class DynamicSampling(Generic[G]):
    """Dynamic sampling as a state the loop drives, so that generating stays a phase of the loop:
    ``request()`` says how many more prompts to roll out (0: done), ``add(groups)`` takes their
    scored groups. It keeps groups with unequal rewards until ``target`` of them, over at most
    1 + extra_rounds draws: after the first draw of ``target`` prompts, each further one asks for the
    missing count divided by the keep rate seen so far (at most ``target``). Disabled, it takes the
    first draw's groups as they are (equal rewards included: they carry no gradient but count).

    rewards_of: a group's rewards. ``kept``: the groups to train on (at most ``target``, in draw
    order; fewer if the draws ran out); ``report``: what happened.
    """

    def __init__(self, target: int, extra_rounds: int, rewards_of: Callable[[G], Sequence[float]],
                 enabled: bool = True):
        self.target, self.extra_rounds, self.rewards_of, self.enabled = target, extra_rounds, rewards_of, enabled
        self.kept: list[G] = []
        self.report = DynamicSamplingReport(target)

    def request(self) -> int:
        r = self.report
        if r.rounds == 0:
            return self.target
        missing = self.target - len(self.kept)
        if not self.enabled or missing == 0 or r.rounds > self.extra_rounds:
            return 0
        keep_rate = len(self.kept) / max(r.drawn, 1)
        return min(self.target, math.ceil(missing / keep_rate)) if keep_rate > 0 else self.target

    def add(self, groups: Sequence[G]) -> None:
        r = self.report
        r.rounds += 1
        r.drawn += len(groups)
        for group in groups:
            if not self.enabled:
                self.kept.append(group)
            elif bool(uniform_groups(torch.tensor([list(self.rewards_of(group))], dtype=torch.float32))[0]):
                r.dropped += 1
            elif len(self.kept) < self.target:
                self.kept.append(group)
            else:
                r.surplus += 1
        r.kept = len(self.kept)


def record_pass_rates(
    stats: dict[str, tuple[int, int]], prompt_ids: Sequence[str], passed_NG: torch.Tensor
) -> None:
    """Store each prompt's latest (passed, total) rollout counts in ``stats`` (in place)."""
    for prompt_id, row in zip(prompt_ids, passed_NG.bool(), strict=True):
        stats[prompt_id] = (int(row.sum()), int(row.numel()))


def filter_prompts(
    prompt_ids: Sequence[str], stats: Mapping[str, tuple[int, int]], cfg: PromptFilterConfig
) -> tuple[list[str], list[str]]:
    """Split prompt ids into (kept, dropped) by their last recorded pass rate; unseen prompts stay.

    solved_by_all drops passed == total; pass_rate drops passed / total > cfg.max_pass_rate.
    """
    if cfg.mode is PromptFilterMode.none:
        return list(prompt_ids), []
    kept, dropped = [], []
    for prompt_id in prompt_ids:
        passed, total = stats.get(prompt_id, (0, 0))
        if total == 0:
            drop = False
        elif cfg.mode is PromptFilterMode.solved_by_all:
            drop = passed == total
        else:
            drop = passed / total > cfg.max_pass_rate
        (dropped if drop else kept).append(prompt_id)
    return kept, dropped
