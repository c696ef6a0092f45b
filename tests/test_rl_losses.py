"""The GRPO policy loss against values worked out by hand (nemo_ext/rl/losses.py)."""

import math

import pytest
import torch

from nemo_ext.config.rl import Aggregation, LossConfig
from nemo_ext.data.batch import pack_sequences
from nemo_ext.rl.losses import (
    KLEstimator,
    KLPenalty,
    LossNormalizer,
    PolicyLoss,
    clipped_objective,
    kl_penalty,
    loss_normalizer,
)


def test_ppo_clip_with_separate_bounds():
    log = lambda x: math.log(x)
    logp = torch.tensor([log(1.5), log(1.5), log(0.5), log(0.5), log(1.5)])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    loss, ratio, clipped = clipped_objective(logp, torch.zeros(5), adv, 0.2, 0.2, dual_clip=None)
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5;          A=-1: max(0.5, 0.8) = 0.8 (clipped)
    assert torch.allclose(loss[:4], torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    assert clipped[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert torch.allclose(ratio, torch.tensor([1.5, 1.5, 0.5, 0.5, 1.5]))
    # clip-higher: the upper bound 1 + 0.28 applies to positive advantages
    loss, _, _ = clipped_objective(logp, torch.zeros(5), adv, clip_low=0.2, clip_high=0.28, dual_clip=None)
    assert torch.allclose(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8, -1.28]))


def test_dual_clip_caps_negative_advantages():
    logp = torch.log(torch.tensor([5.0, 1.0, 5.0]))
    adv = torch.tensor([-1.0, -2.0, 1.0])
    loss, _, clipped = clipped_objective(logp, torch.zeros(3), adv, 0.2, 0.2, dual_clip=3.0)
    # ratio 5, A=-1: PPO gives max(5, 1.2) = 5, capped at -A * 3 = 3; ratio 1, A=-2: 2 (< 6, untouched)
    # ratio 5, A=+1: max(-5, -1.2) = -1.2 (the dual clip never touches positive advantages)
    assert torch.allclose(loss, torch.tensor([3.0, 2.0, -1.2]))
    assert clipped.tolist() == [1.0, 0.0, 1.0]


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))  # log-ratio log 2
    ln2 = math.log(2)
    assert torch.allclose(kl_penalty(logp, ref, KLEstimator.k1, 10.0), torch.tensor([ln2]))
    assert torch.allclose(kl_penalty(logp, ref, KLEstimator.k2, 10.0), torch.tensor([0.5 * ln2**2]))
    assert torch.allclose(kl_penalty(logp, ref, KLEstimator.k3, 10.0), torch.tensor([0.5 + ln2 - 1]))
    # clamps: a log-ratio of -15 gives k3 = e^15 - 16, clamped to 10; k1 of 15 clamped to 10
    assert kl_penalty(torch.tensor([-15.0]), torch.tensor([0.0]), KLEstimator.k3, 10.0).item() == 10.0
    assert kl_penalty(torch.tensor([15.0]), torch.tensor([0.0]), KLEstimator.k1, 10.0).item() == 10.0


def two_sequences(weight_b: float = 1.0):
    """Sequence A: prompt + 3 response tokens, advantage +1; B: prompt + 1 response token, advantage -2.

    After the shift onto targets, A has loss tokens at positions 0, 1, 2 and B at position 4.
    """
    return pack_sequences(
        [[5, 6, 7, 8], [5, 9]],
        [[0, 1, 1, 1], [0, 1]],
        {"advantages": [[0, 1, 1, 1], [0, -2]], "weights": [[0, 1, 1, 1], [0, weight_b]]},
    )


@pytest.mark.parametrize("aggregation, expected, grads", [
    # on-policy, ratio 1: token losses -A = -1, -1, -1 (A) and +2 (B)
    (Aggregation.token_mean, (-3 + 2) / 4, [-1 / 4] * 3 + [0.0, 2 / 4]),
    (Aggregation.seq_mean, (-1 + 2) / 2, [-1 / 6] * 3 + [0.0, 2 / 2]),
    (Aggregation.constant, (-3 + 2) / (2 * 4), [-1 / 8] * 3 + [0.0, 2 / 8]),
])
def test_aggregations(aggregation, expected, grads):
    batch = two_sequences()
    norm = loss_normalizer([batch], max_response_len=4)
    assert (norm.tokens, norm.sequences) == (4.0, 2)
    logp = torch.full((6,), -1.0, requires_grad=True)
    loss, metrics = PolicyLoss(LossConfig(aggregation=aggregation), norm)(logp, batch)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor(grads + [0.0]))
    assert metrics["ratio"].item() == pytest.approx(1.0)
    assert metrics["clip_frac"].item() == 0.0


def test_zero_weight_removes_a_response_from_loss_and_normalizer():
    batch = two_sequences(weight_b=0.0)  # B filtered out (e.g. truncated)
    norm = loss_normalizer([batch], max_response_len=4)
    assert (norm.tokens, norm.sequences) == (3.0, 1)
    loss, _ = PolicyLoss(LossConfig(), norm)(torch.full((6,), -1.0), batch)
    assert loss.item() == pytest.approx(-1.0)


def test_truncated_importance_sampling_weight():
    # old p = 0.5, vLLM p = 0.25: weight 2 capped at 1.5; on-policy token loss -A = -1 -> -1.5
    batch = pack_sequences([[1, 2]], [[0, 1]], {
        "advantages": [[0, 1]],
        "old_logprobs": [[0, math.log(0.5)]],
        "rollout_logprobs": [[0, math.log(0.25)]],
    })
    logp = torch.tensor([math.log(0.5), 0.0])
    loss, metrics = PolicyLoss(LossConfig(tis_cap=1.5), loss_normalizer([batch], 2))(logp, batch)
    assert loss.item() == pytest.approx(-1.5)
    assert metrics["is_weight"].item() == pytest.approx(1.5)
    with pytest.raises(KeyError, match="rollout_logprobs"):
        PolicyLoss(LossConfig(tis_cap=1.5), loss_normalizer([batch], 2))(torch.zeros(6), two_sequences())


def test_kl_term_is_added_per_token():
    # ratio 1 so the policy term is -A = -1; k1 with log-ratio log 2, coefficient 0.1
    fields = {"advantages": [[0, 1]], "ref_logprobs": [[0, math.log(0.25)]]}
    batch = pack_sequences([[1, 2]], [[0, 1]], fields)
    logp = torch.tensor([math.log(0.5), 0.0])
    loss, metrics = PolicyLoss(LossConfig(), loss_normalizer([batch], 2), KLPenalty(0.1, KLEstimator.k1))(logp, batch)
    assert loss.item() == pytest.approx(-1 + 0.1 * math.log(2))
    assert metrics["kl_ref"].item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_micro_batches_with_accumulation_equal_one_batch(aggregation):
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 3, 7, 4]
    seqs = [torch.randint(0, 50, (n,), generator=gen).tolist() for n in lengths]
    trained = [[0, 0] + [1] * (n - 2) for n in lengths]
    fields = {
        "advantages": [[float(a)] * n for a, n in zip([1.0, -0.5, 2.0, -1.0], lengths, strict=True)],
        "old_logprobs": [(-torch.rand(n, generator=gen)).tolist() for n in lengths],
        "weights": [[1.0] * n if i != 1 else [0.0] * n for i, n in enumerate(lengths)],
    }
    logp_all = [-torch.rand(n, generator=gen) for n in lengths]  # per sequence, aligned with targets
    cfg = LossConfig(aggregation=aggregation, clip_low=0.1, clip_high=0.15, dual_clip=2.0)

    def run(groups):
        batches = [pack_sequences([seqs[i] for i in g], [trained[i] for i in g],
                                  {k: [v[i] for i in g] for k, v in fields.items()}) for g in groups]
        norm = loss_normalizer(batches, max_response_len=8)
        leaves = [torch.cat([logp_all[i] for i in g]).requires_grad_() for g in groups]
        total = sum(PolicyLoss(cfg, norm)(lp, b)[0] for lp, b in zip(leaves, batches, strict=True))
        total.backward()
        grads = {i: chunk for g, leaf in zip(groups, leaves, strict=True)
                 for i, chunk in zip(g, torch.split(leaf.grad, [lengths[i] for i in g]), strict=True)}
        return total, grads

    full_loss, full_grads = run([[0, 1, 2, 3]])
    micro_loss, micro_grads = run([[0, 1], [2], [3]])
    assert micro_loss.item() == pytest.approx(full_loss.item(), abs=1e-6)
    assert full_loss.item() != 0.0
    for i in range(4):
        assert torch.allclose(micro_grads[i], full_grads[i], atol=1e-7)


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_a_micro_batch_of_zero_advantages_adds_nothing_but_its_count(aggregation):
    live = two_sequences()
    dead = pack_sequences([[5, 6, 7]], [[0, 1, 1]], {"advantages": [[0, 0, 0]], "weights": [[0, 1, 1]]})
    norm = loss_normalizer([live, dead], max_response_len=4)
    assert (norm.tokens, norm.sequences) == (6.0, 3)  # the dead sequence's 2 tokens count
    logp = torch.full((3,), -1.0, requires_grad=True)
    loss, _ = PolicyLoss(LossConfig(aggregation=aggregation), norm)(logp, dead)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3))
    # skipping it: metrics are means over the tokens actually run
    skipped = LossNormalizer(norm.tokens, norm.sequences, 4, metric_tokens=4.0)
    _, metrics = PolicyLoss(LossConfig(aggregation=aggregation), skipped)(torch.full((6,), -1.0), live)
    assert metrics["ratio"].item() == pytest.approx(1.0)
