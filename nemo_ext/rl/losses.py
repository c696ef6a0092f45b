"""The GRPO policy loss: one implementation whose variants (GRPO, DAPO, Dr. GRPO) are parameters.

Per response token t with advantage A_t, ratio r_t = pi(t) / pi_old(t):

    l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))      PPO clip (arXiv 1707.06347),
                                                                         separate bounds = DAPO's
                                                                         clip-higher (arXiv 2503.14476)
    l_t = min(l_t, -A_t c)        if A_t < 0 and dual_clip = c           dual clip (arXiv 1912.09729)
    l_t = w_t l_t,  w_t = min(pi_old(t) / pi_vllm(t), tis_cap)           truncated importance sampling
                                                                         for the trainer/vLLM mismatch
                                                                         (Yao et al. 2025, "Your
                                                                         efficient RL framework secretly
                                                                         brings you off-policy RL")
    l_t = l_t + coef * KL_t       KL_t one of k1 / k2 / k3 against a reference policy (Schulman 2020;
                                 optional, ``KLPenalty``: the GRPO loop loads no reference policy)

and the loss is sum_t a_t l_t with aggregation weights a_t:

    token_mean  a_t = m_t / (weighted tokens in the global batch)                 the paper, DAPO
    seq_mean    a_t = m_t / (weighted tokens of t's sequence * sequences)         original GRPO
    constant    a_t = m_t / (sequences * max_response_len)                        Dr. GRPO

where m_t = loss_mask_t * weight_t (weights: per-token loss weights, 0 for overlong-filtered
responses). The global counts come in through ``LossNormalizer``, built once per step over every
micro-batch, so k micro-batches with gradient accumulation give exactly the full-batch gradient.

The paper's setting is token_mean, one update per rollout batch (ratio 1, clipping inactive) and no
KL: ``LossConfig()``'s defaults and ``kl=None``. Left out: entropy bonus (the paper uses none), value
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from nemo_ext.config.rl import Aggregation, LossConfig
from nemo_ext.data.batch import PackedBatch
from nemo_ext.rl.logprob_stats import logprob_sums

ADVANTAGES, OLD_LOGPROBS, ROLLOUT_LOGPROBS, REF_LOGPROBS, WEIGHTS = (
    "advantages", "old_logprobs", "rollout_logprobs", "ref_logprobs", "weights",
)
"""Names of the per-token ``PackedBatch.token_fields`` the loss reads (advantages is required)."""

_MAX_LOG_RATIO = 20.0  # exp() of a log-ratio beyond this overflows float32 in k3


class KLEstimator(StrEnum):
    k1 = "k1"  # log(pi / ref)
    k2 = "k2"  # 0.5 * log(pi / ref)^2
    k3 = "k3"  # ref / pi - log(ref / pi) - 1 (Schulman's unbiased, low-variance estimator)


@dataclass(frozen=True)
class KLPenalty:
    """The optional KL term: ``coef`` times a per-token estimate of KL(pi || ref) against the
    ``ref_logprobs`` token field, each clamped to [-clamp, clamp]."""

    coef: float
    estimator: KLEstimator = KLEstimator.k3
    clamp: float = 10.0


@dataclass(frozen=True)
class LossNormalizer:
    """The global counts of one optimizer step (every micro-batch, every data-parallel rank).

    tokens:           sum of loss_mask * weight (the weighted response tokens).
    sequences:        sequences with at least one weighted token.
    max_response_len: Dr. GRPO's constant (tokens).
    metric_tokens:    the weighted tokens of the micro-batches actually run (the metrics' token means);
                      fewer than ``tokens`` when micro-batches with no policy-gradient term are skipped.
    """

    tokens: float
    sequences: int
    max_response_len: int
    metric_tokens: float | None = None


def loss_normalizer(micro_batches: Sequence[PackedBatch], max_response_len: int,
                    run: Sequence[PackedBatch] | None = None) -> LossNormalizer:
    """Count over all micro-batches of the step (callers under data parallelism pass every rank's).

    run: the micro-batches the update actually runs, when it skips some (their weighted tokens are the
    metrics' ``metric_tokens``); None: all of them.
    """
    tokens, sequences = 0.0, 0
    for batch in micro_batches:
        mask = token_mask(batch)
        tokens += float(mask.sum())
        sequences += int((per_sequence_sum(mask, batch.cu_seqlens) > 0).sum())
    metric_tokens = None if run is None else float(sum(float(token_mask(b).sum()) for b in run))
    return LossNormalizer(tokens=tokens, sequences=sequences, max_response_len=max_response_len,
                          metric_tokens=metric_tokens)


def token_mask(batch: PackedBatch) -> torch.Tensor:
    """[T] float32: loss_mask times the optional per-token ``weights`` field."""
    weights = batch.token_fields.get(WEIGHTS)
    return batch.loss_mask if weights is None else batch.loss_mask * weights


def per_sequence_sum(values_T: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[S]: the sum of values_T over each packed sequence."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=values_T.device), lengths)
    return values_T.new_zeros(lengths.numel()).index_add_(0, seq_ids, values_T)


def aggregation_weights(batch: PackedBatch, aggregation: Aggregation, norm: LossNormalizer) -> torch.Tensor:
    """[T] a_t such that the step's loss is sum_t a_t l_t over all its micro-batches."""
    mask = token_mask(batch)
    if aggregation is Aggregation.token_mean:
        return mask / max(norm.tokens, 1.0)
    if aggregation is Aggregation.constant:
        return mask / max(norm.sequences * norm.max_response_len, 1)
    lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
    seq_tokens = torch.repeat_interleave(per_sequence_sum(mask, batch.cu_seqlens), lengths.long())
    return mask / (seq_tokens.clamp(min=1e-12) * max(norm.sequences, 1))


def clipped_objective(
    logp_T: torch.Tensor, old_logp_T: torch.Tensor, adv_T: torch.Tensor,
    clip_low: float, clip_high: float, dual_clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss. Returns (loss_T, ratio_T, clipped_T), clipped_T 1.0 where a clip bound
    (either of the ratio bounds or the dual clip) decided the value."""
    ratio = torch.exp(logp_T - old_logp_T)
    unclipped = -adv_T * ratio
    clipped = -adv_T * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        cap = -adv_T * dual_clip
        dual = (adv_T < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        was_clipped = was_clipped | dual
    return loss, ratio, was_clipped.float()


def kl_penalty(
    logp_T: torch.Tensor, ref_logp_T: torch.Tensor, estimator: KLEstimator, clamp: float
) -> torch.Tensor:
    """[T] per-token estimate of KL(pi || ref) from samples of pi, clamped to [-clamp, clamp]."""
    log_ratio = (logp_T - ref_logp_T).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if estimator is KLEstimator.k1:
        kl = log_ratio
    elif estimator is KLEstimator.k2:
        kl = 0.5 * log_ratio**2
    else:
        kl = torch.exp(-log_ratio) + log_ratio - 1.0
    return kl.clamp(-clamp, clamp)


@dataclass(frozen=True)
class PolicyLoss:
    """A ``LossFn`` (nemo_ext/backends/base.py) for one optimizer step.

    Reads ``advantages`` [T] and optionally ``old_logprobs`` (default: the current log-probs,
    detached: the strictly on-policy case), ``rollout_logprobs`` (needed when ``tis_cap`` is set, or
    with ``entropy_T``), ``ref_logprobs`` (needed with ``kl``) and ``weights`` from ``batch.token_fields``.
    Metrics are token means over the micro-batches run (their shares add up). Given ``entropy_T``
    (``Backend.train_step(with_entropy=True)``), the forward's entropy and vLLM-mismatch sums too:
    ``logprob_stats.logprob_sums``, the ``measured/*`` metrics.
    """

    cfg: LossConfig
    norm: LossNormalizer
    kl: KLPenalty | None = None

    def __call__(
        self, logprobs_T: torch.Tensor, batch: PackedBatch, entropy_T: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fields, cfg = batch.token_fields, self.cfg
        old = fields.get(OLD_LOGPROBS, logprobs_T.detach())
        pg, ratio, clipped = clipped_objective(
            logprobs_T, old, fields[ADVANTAGES], cfg.clip_low, cfg.clip_high, cfg.dual_clip
        )
        metric_tokens = self.norm.tokens if self.norm.metric_tokens is None else self.norm.metric_tokens
        share = token_mask(batch) / max(metric_tokens, 1.0)  # token-mean weights for the metrics
        metrics = {"ratio": (share * ratio).sum().detach(), "clip_frac": (share * clipped).sum()}
        if cfg.tis_cap is not None:
            is_weight = torch.exp(old - _required(fields, ROLLOUT_LOGPROBS, "tis_cap")).clamp(max=cfg.tis_cap)
            pg = pg * is_weight
            metrics["is_weight"] = (share * is_weight).sum()
        total = pg
        if self.kl is not None:
            ref = _required(fields, REF_LOGPROBS, "of the KL penalty")
            kl = kl_penalty(logprobs_T, ref, self.kl.estimator, self.kl.clamp)
            total = pg + self.kl.coef * kl
            metrics["kl_ref"] = (share * kl).sum().detach()
        if entropy_T is not None:
            rollout = _required(fields, ROLLOUT_LOGPROBS, "the forward measures the vLLM mismatch")
            metrics.update(logprob_sums(logprobs_T, entropy_T, rollout, batch.loss_mask))
        weights = aggregation_weights(batch, cfg.aggregation, self.norm)
        metrics["pg_loss"] = (weights * pg).sum().detach()
        return (weights * total).sum(), metrics


def _required(fields: dict[str, torch.Tensor], name: str, why: str) -> torch.Tensor:
    if name not in fields:
        raise KeyError(f"the policy loss needs token field {name!r} because {why}; fields: {sorted(fields)}")
    return fields[name]
