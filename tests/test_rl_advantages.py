"""Group advantages against values worked out by hand (nemo_ext/rl/advantages.py)."""

import pytest
import torch

from nemo_ext.rl.advantages import group_advantages, uniform_groups


def test_grpo_divides_by_the_unbiased_group_std():
    # [1, 0, 0, 0]: mean 0.25, deviations 0.75 / -0.25, unbiased variance (0.5625 + 3 * 0.0625) / 3 = 0.25
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "grpo", eps=0.0)
    assert torch.allclose(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))
    # [1, 0, 0, 1]: mean 0.5, std sqrt(1/3): +-0.5 * sqrt(3)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "grpo", eps=0.0)
    assert torch.allclose(adv, torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254]]))


def test_dr_grpo_only_centers():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "dr_grpo")
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]))


def test_rloo_subtracts_the_mean_of_the_others():
    # response 0: 1 - mean(0, 0, 0) = 1; the others: 0 - mean(1, 0, 0) = -1/3
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "rloo")
    assert torch.allclose(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_groups_get_exactly_zero(estimator):
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    adv = group_advantages(rewards, estimator)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert (adv[2] != 0).all()
    assert uniform_groups(rewards).tolist() == [True, True, False]


def test_groups_are_independent():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    adv = group_advantages(rewards, "dr_grpo")
    assert torch.allclose(adv, torch.tensor([[0.5, -0.5], [1.0, -1.0]]))


def test_a_group_of_one_is_rejected():
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.tensor([[1.0], [0.0]]))
