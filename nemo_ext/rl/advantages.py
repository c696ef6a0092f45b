"""Group-relative advantages for GRPO.

Implements the estimators compared in the GRPO literature, one value per response, which the loop
then copies onto every response token (the paper: "the same for every token"):

- ``grpo``: (r - mean) / (std + eps) within the group (DeepSeekMath, arXiv 2402.03300; the
  AceReason-Nemotron 1.0/1.1 default, ../shared/PAPER.md "objective" row). ``std`` is the unbiased
  sample standard deviation (ddof = 1), as in TRL and verl; the paper does not say which.
- ``dr_grpo``: r - mean, no division by the standard deviation (Dr. GRPO, arXiv 2503.20783).
- ``rloo``: r_i minus the mean of the *other* responses of the group (leave-one-out, RLOO,
  arXiv 2402.14740), which equals G / (G - 1) * (r_i - mean).

A group whose rewards are all equal carries no learning signal: every estimator returns exactly 0
for it (not a round-off residue), so dynamic sampling can recognise it.

Left out: process (per-step) rewards, discounting and value baselines (GAE): rewards here are one
outcome score per response.
"""

from __future__ import annotations

import torch

from nemo_ext.config.rl import AdvantageEstimator


def group_advantages(
    rewards_NG: torch.Tensor, estimator: AdvantageEstimator | str = "grpo", eps: float = 1e-6
) -> torch.Tensor:
    """Advantages of N groups of G responses each.

    rewards_NG: [N, G] float, the scalar reward of response g to prompt n (G >= 2).
    Returns [N, G] float32; rows whose rewards are all equal are exactly 0.
    """
    if rewards_NG.dim() != 2 or rewards_NG.shape[1] < 2:
        raise ValueError(f"rewards must be [num_groups, group_size >= 2], got {tuple(rewards_NG.shape)}")
    estimator = AdvantageEstimator(estimator)
    rewards = rewards_NG.to(torch.float32)
    group_size = rewards.shape[1]
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if estimator is AdvantageEstimator.grpo:
        adv = centered / (rewards.std(dim=1, keepdim=True) + eps)
    elif estimator is AdvantageEstimator.dr_grpo:
        adv = centered
    else:
        adv = centered * (group_size / (group_size - 1))
    return adv.masked_fill(uniform_groups(rewards).unsqueeze(1), 0.0)


def uniform_groups(rewards_NG: torch.Tensor) -> torch.Tensor:
    """[N] bool: True for groups whose rewards are all equal (all solved, all failed, ...)."""
    return (rewards_NG == rewards_NG[:, :1]).all(dim=1)
