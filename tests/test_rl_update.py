"""The on-policy update measures the statistics of what it trains: the torch backend on the tiny model,
on the CPU, without vLLM.

``train_step(with_entropy=True)`` with the policy loss gives the entropy and vLLM mismatch of the
no-grad log-prob pass over the same micro-batches, and the same update as the old path (old
log-probs attached from that pass); ``grpo.update_policy`` runs that pass over the untrained
micro-batches only and still reports the step's statistics over every response token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.config.rl import AdvantageConfig, LossConfig, OverlongConfig, StageConfig, Task
from nemo_ext.config.schema import ModelConfig, OptimConfig, TrainerConfig
from nemo_ext.data.batch import pack_sequences
from nemo_ext.rl import grpo
from nemo_ext.rl.data_parallel import RankShare
from nemo_ext.rl.experience import Group, build_experience, logprob_pass_stats
from nemo_ext.rl.logprob_stats import split_measured
from nemo_ext.rl.losses import ADVANTAGES, OLD_LOGPROBS, ROLLOUT_LOGPROBS, WEIGHTS, PolicyLoss, loss_normalizer
from nemo_ext.rl.prompts import RLPrompt
from nemo_ext.rl.setup import PolicyUpdate

TEMPERATURE = 0.8
LR = 1e-3


def _backend(model_dir):
    from nemo_ext.backends.torch_backend import TorchBackend

    return TorchBackend(str(model_dir), ModelConfig(logits_chunk_tokens=8), TrainerConfig(grad_clip=1.0),
                        OptimConfig(), LRSchedule.constant(LR), torch.device("cpu"))


def _micro_batches() -> list:
    """Three micro-batches of 1-3 sequences (3 prompt tokens, then the response), advantages +-1."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for lengths in [(9, 14), (20,), (6, 11, 5)]:
        seqs = [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]
        masks = [[0] * 3 + [1] * (n - 3) for n in lengths]
        advantages = [[0.0] * 3 + [(-1.0) ** i] * (n - 3) for i, n in enumerate(lengths)]
        batches.append(pack_sequences(seqs, masks, {ADVANTAGES: advantages, WEIGHTS: masks}))
    return batches


def _with_rollout_logprobs(batches: list, trainer: list, scales=(0.2, 0.3, 0.25)) -> list:
    """vLLM's log-probs: the trainer's plus noise of a different size in each micro-batch, so each has
    its own largest gap and the step's is the maximum of theirs, not the sum."""
    g = torch.Generator().manual_seed(1)
    return [replace(b, token_fields={**b.token_fields,
                                     ROLLOUT_LOGPROBS: logp + scale * torch.randn(logp.shape, generator=g)})
            for b, (logp, _), scale in zip(batches, trainer, scales, strict=True)]


def test_the_training_forward_measures_the_log_prob_pass_statistics_and_trains_as_the_old_path(tiny_model_dir):
    measuring, old_path = _backend(tiny_model_dir), _backend(tiny_model_dir)
    plain = _micro_batches()
    batches = _with_rollout_logprobs(plain, measuring.logprobs(plain, TEMPERATURE))
    before = measuring.logprobs(batches, TEMPERATURE)  # the no-grad pass, before the update
    expected = logprob_pass_stats(batches, before)
    per_batch = [logprob_pass_stats([b], [out]).max_abs for b, out in zip(batches, before, strict=True)]
    assert expected.max_abs == max(per_batch) and sum(per_batch) > 1.5 * expected.max_abs
    loss = PolicyLoss(LossConfig(tis_cap=2.0), loss_normalizer(batches, max_response_len=17))

    measured, out = split_measured(measuring.train_step(batches, loss, TEMPERATURE, with_entropy=True))
    with_old = [replace(b, token_fields={**b.token_fields, OLD_LOGPROBS: logp})
                for b, (logp, _) in zip(batches, before, strict=True)]
    reference = old_path.train_step(with_old, loss, TEMPERATURE)

    assert measured.tokens == expected.tokens == sum(b.num_loss_tokens for b in batches) == 47
    for key, value in expected.metrics().items():
        assert measured.metrics()[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert expected.metrics()["mismatch/kl"] > 1e-3 and 4 < expected.metrics()["entropy"] < 6.3
    assert out.keys() == reference.keys() and not any(k.startswith("measured") for k in out)
    for key in ("loss", "grad_norm", "pg_loss", "ratio", "is_weight"):
        assert out[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    assert reference["grad_norm"] > 0
    weights, old_weights = dict(measuring.hf_weights()), dict(old_path.hf_weights())
    initial = dict(_backend(tiny_model_dir).hf_weights())
    for name, w in weights.items():
        assert float((w - old_weights[name]).abs().max()) < 1e-3 * LR, name
    assert max(float((w - initial[name]).abs().max()) for name, w in weights.items()) > 0.5 * LR  # it trained


@dataclass
class FakeCompletion:  # the fields of nemo_ext.generation.Completion the loop reads
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool


class NoEngine:
    """The rollout engine's part in ``update_policy`` (sleep, take the weights, wake), without vLLM."""

    def sleep(self) -> None:
        pass

    def load_weights(self, weights) -> None:
        for _ in weights:
            pass

    def wake(self) -> None:
        pass


def _groups(rewards: list[list[float]]) -> list[Group]:
    g = torch.Generator().manual_seed(2)
    groups = []
    for i, rs in enumerate(rewards):
        completions = []
        for _ in rs:
            n = int(torch.randint(3, 12, (1,), generator=g))
            completions.append(FakeCompletion(torch.randint(0, 512, (n,), generator=g).tolist(),
                                              (-2 * torch.rand(n, generator=g)).tolist(), False))
        groups.append(Group(RLPrompt(f"p{i}", Task.math, "", "0"), [1, 2, 3 + i], completions, rs,
                            [r > 0 for r in rs]))
    return groups


class CountingBackend:
    """A backend whose no-grad log-prob passes are recorded."""

    def __init__(self, backend):
        self.backend, self.passes = backend, []

    def logprobs(self, micro_batches, temperature):
        self.passes.append(list(micro_batches))
        return self.backend.logprobs(micro_batches, temperature)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.mark.parametrize("rewards", [[[1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.0, 1.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]],
                         ids=["two_trained_groups_one_not", "nothing_trained"])
def test_update_policy_measures_only_untrained_micro_batches_without_the_update(tiny_model_dir, rewards):
    stage = StageConfig(max_response_len=12, group_size=len(rewards[0]), overlong=OverlongConfig(filter=False))
    backend = CountingBackend(_backend(tiny_model_dir))
    update = PolicyUpdate(backend, NoEngine(), RankShare(), AdvantageConfig(), LossConfig(), micro_batch_tokens=24)
    groups = _groups(rewards)
    batch = build_experience(groups, update.advantage, False, update.micro_batch_tokens, stage.max_response_len)
    every = batch.trained + batch.untrained
    expected = logprob_pass_stats(every, backend.backend.logprobs(every, TEMPERATURE)).metrics()

    metrics = grpo.update_policy(update, stage, groups, TEMPERATURE, grpo.PhaseTimer())

    (measured,) = backend.passes  # the logprobs phase: the untrained micro-batches, which are all when none train
    assert sum(mb.num_tokens for mb in measured) == sum(mb.num_tokens for mb in batch.untrained)
    assert all(not mb.token_fields[ADVANTAGES].any() for mb in measured)
    for key, value in expected.items():  # over every response token, trained or not, as one pass gave
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert not any("measured" in k for k in metrics)
    assert ("update/skipped" in metrics) == (not batch.trained)
    if batch.trained:
        assert len(batch.trained) >= 2 and batch.untrained and metrics["update/grad_norm"] > 0
        assert 0 < sum(mb.num_loss_tokens for mb in measured) < metrics["loss_tokens"]
