"""Scored rollout groups -> the experience of one GRPO update (``ExperienceBatch``), and the
statistics of its no-grad log-prob pass.

The one form the experience takes from the rewards to the loss, built once by ``build_experience``:
the [N, G] rewards, advantages and loss weights of the step's responses, and the packed micro-batches
that carry them to the loss. Every response becomes one packed sequence (prompt tokens untrained,
response tokens trained) with its group advantage, its loss weight (0 when overlong filtering removed
it) and vLLM's log-probs of its tokens as per-token fields (named in ``losses.py``); sequences are
grouped into micro-batches of at most ``micro_batch_tokens`` tokens by first-fit-decreasing, those
with a policy-gradient term apart from those without, and the step's loss normalizer is counted over
all of them. Nothing here knows about vLLM, processes or files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from nemo_ext.config.rl import AdvantageConfig
from nemo_ext.data.batch import PackedBatch, pack_sequences
from nemo_ext.data.packing import first_fit_decreasing
from nemo_ext.rl.advantages import group_advantages
from nemo_ext.rl.filters import overlong_weights
from nemo_ext.rl.logprob_stats import LogprobStats, logprob_sums
from nemo_ext.rl.losses import ADVANTAGES, ROLLOUT_LOGPROBS, WEIGHTS, LossNormalizer, loss_normalizer
from nemo_ext.rl.prompts import RLPrompt


class CompletionLike(Protocol):
    """What the loop needs of ``nemo_ext.generation.Completion``."""

    token_ids: Sequence[int]
    logprobs: Sequence[float] | None  # the sampled tokens' processed (temperature-scaled) log-probs
    truncated: bool  # finished by the length limit


@dataclass
class Group:
    """One prompt's G scored responses."""

    prompt: RLPrompt
    prompt_ids: list[int]
    completions: list[CompletionLike]
    rewards: list[float]  # the verdicts' rewards plus any length penalty
    passed: list[bool]  # the verdict accepted the response


@dataclass
class StepTensors:
    """[N, G] views of a step's groups."""

    rewards: torch.Tensor  # float32
    passed: torch.Tensor  # bool
    truncated: torch.Tensor  # bool
    lengths: torch.Tensor  # int64 response tokens


def step_tensors(groups: Sequence[Group]) -> StepTensors:
    sizes = {len(g.completions) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"every group needs the same number of responses, got sizes {sorted(sizes)}")
    return StepTensors(
        rewards=torch.tensor([g.rewards for g in groups], dtype=torch.float32),
        passed=torch.tensor([g.passed for g in groups], dtype=torch.bool),
        truncated=torch.tensor([[c.truncated for c in g.completions] for g in groups], dtype=torch.bool),
        lengths=torch.tensor([[len(c.token_ids) for c in g.completions] for g in groups], dtype=torch.int64),
    )


@dataclass(frozen=True)
class ExperienceBatch:
    """One update's experience. ``responses``, ``advantages_NG`` and ``weights_NG`` are [N, G] (group,
    response); ``trained`` are the micro-batches of the responses with a policy-gradient term (advantage
    and weight both non-zero), ``untrained`` the others, which join the no-grad log-prob pass (entropy,
    mismatch: the update's forward measures the trained ones) and the normalizer but not the update,
    whose gradient they would not change;
    ``normalizer`` counts every micro-batch, its ``metric_tokens`` the trained ones."""

    responses: StepTensors
    advantages_NG: torch.Tensor  # float32
    weights_NG: torch.Tensor  # float32 loss weight per response
    trained: list[PackedBatch]
    untrained: list[PackedBatch]
    normalizer: LossNormalizer


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside the block (None: left as they are)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_experience(groups: Sequence[Group], advantage: AdvantageConfig, overlong_filter: bool,
                     micro_batch_tokens: int, max_response_len: int, threads: int | None = 1) -> ExperienceBatch:
    """The experience of ``groups``: advantages by ``advantage.estimator`` within each group, truncated
    responses weighted 0 when ``overlong_filter`` (they stay in their group's baseline), micro-batches
    of at most ``micro_batch_tokens`` tokens (or the longest sequence, if longer).

    threads: torch's CPU threads for the tensor work (None: the process's). One by default: each op is
    memory-bound and small, and above a size threshold (32,768 elements for elementwise ops: a 32K
    response) torch runs it as a parallel region, which stalls while the host's cores are busy (2.1M
    tokens of 32K responses took 6.3 s on the GPU machine; on two busy cores 0.40 s on one thread
    against 2.05 s on two: docs/performance.md).
    """
    with cpu_threads(threads):
        responses = step_tensors(groups)
        advantages = group_advantages(responses.rewards, advantage.estimator, advantage.eps)
        weights = overlong_weights(responses.truncated, overlong_filter)
        live = (advantages != 0) & (weights > 0) & (responses.lengths > 0)
        seqs, trained_mask, fields = [], [], {ADVANTAGES: [], WEIGHTS: [], ROLLOUT_LOGPROBS: []}
        for n, group in enumerate(groups):
            prompt = torch.tensor(group.prompt_ids, dtype=torch.long)
            prompt_zeros = torch.zeros(len(prompt))
            for g, completion in enumerate(group.completions):
                resp = torch.as_tensor(completion.token_ids, dtype=torch.long)
                seqs.append(torch.cat([prompt, resp]))
                trained_mask.append(torch.cat([prompt_zeros, torch.ones(len(resp))]))
                fields[ADVANTAGES].append(torch.cat([prompt_zeros, torch.full((len(resp),), float(advantages[n, g]))]))
                fields[WEIGHTS].append(torch.cat([prompt_zeros, torch.full((len(resp),), float(weights[n, g]))]))
                logprobs = (torch.zeros(len(resp)) if completion.logprobs is None
                            else torch.as_tensor(completion.logprobs, dtype=torch.float32))
                fields[ROLLOUT_LOGPROBS].append(torch.cat([prompt_zeros, logprobs]))
        bin_size = max(micro_batch_tokens, max(len(s) for s in seqs))

        def pack(part: list[int]) -> list[PackedBatch]:
            bins = [[part[j] for j in b] for b in first_fit_decreasing([len(seqs[i]) for i in part], bin_size)]
            return [pack_sequences([seqs[i] for i in b], [trained_mask[i] for i in b],
                                   {k: [v[i] for i in b] for k, v in fields.items()}) for b in bins]

        flat = live.flatten().tolist()
        trained = pack([i for i, on in enumerate(flat) if on])
        untrained = pack([i for i, on in enumerate(flat) if not on])
        normalizer = loss_normalizer(trained + untrained, max_response_len, run=trained)
        return ExperienceBatch(responses, advantages, weights, trained, untrained, normalizer)


def logprob_pass_stats(
    micro_batches: Sequence[PackedBatch], logprobs: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> LogprobStats:
    """The entropy and vLLM-mismatch sums of a no-grad log-prob pass over ``micro_batches``.

    logprobs: ``Backend.logprobs`` output, (logp_T, entropy_T) per micro-batch.
    """
    sums = [logprob_sums(logp, entropy, mb.token_fields[ROLLOUT_LOGPROBS], mb.loss_mask)
            for mb, (logp, entropy) in zip(micro_batches, logprobs, strict=True)]
    return LogprobStats.merge([LogprobStats.from_sums(s) for s in sums])
