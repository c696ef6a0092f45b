"""The trainer's statistics of a step's responses: temperature-adjusted entropy and trainer/vLLM mismatch.

Sums over the response tokens (``loss_mask``), measured where the trainer's log-probs are computed
anyway: for trained micro-batches by the training forward (``PolicyLoss`` given the entropies returns
the sums as its ``measured/*`` metrics, which the backend reduces over micro-batches and ranks), for
the others by the no-grad log-prob pass. ``LogprobStats`` holds the sums of either, merges them, and
turns them into the logged means. Its own module because both ``losses`` and ``experience`` use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

MEASURED = "measured/"
TOKENS, ENTROPY, KL, MAX_ABS = "measured/tokens", "measured/entropy", "measured/kl", "measured/max_abs/max"
"""The sums' names, as ``PolicyLoss`` metrics; ``/max``: reduced by maximum (``backends.base.LossFn``)."""


def logprob_sums(logp_T: torch.Tensor, entropy_T: torch.Tensor, rollout_logp_T: torch.Tensor,
                 mask_T: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalar float32 tensors (no gradient) over the tokens where ``mask_T`` (0/1) is 1: their count,
    summed entropy (nats), summed k3 estimates of KL(vLLM || trainer), and the largest
    |log p_trainer - log p_vLLM| (0 where none).

    logp_T, entropy_T: the trainer's [T]; rollout_logp_T: vLLM's [T] (processed log-probs).
    """
    diff = (logp_T.detach() - rollout_logp_T) * mask_T  # log p_trainer - log p_vLLM
    return {TOKENS: mask_T.sum(), ENTROPY: (entropy_T.detach() * mask_T).sum(),
            KL: ((torch.expm1(diff) - diff) * mask_T).sum(), MAX_ABS: diff.abs().max()}


@dataclass
class LogprobStats:
    """The sums of ``logprob_sums`` as floats; ``merge`` combines the sums of several passes
    (micro-batches, data-parallel ranks, the trained and untrained micro-batches), ``metrics`` turns
    them into the logged means."""

    tokens: float = 0.0
    entropy: float = 0.0  # summed nats of the temperature-adjusted entropy
    kl: float = 0.0  # summed k3 estimates of KL(vLLM || trainer)
    max_abs: float = 0.0  # largest |log p_vLLM - log p_trainer|

    @staticmethod
    def from_sums(sums: Mapping[str, float | torch.Tensor]) -> LogprobStats:
        """From ``logprob_sums``' output, or a train step's metrics reduced from it."""
        return LogprobStats(*(float(sums[name]) for name in (TOKENS, ENTROPY, KL, MAX_ABS)))

    @staticmethod
    def merge(parts: Sequence[LogprobStats]) -> LogprobStats:
        return LogprobStats(sum(p.tokens for p in parts), sum(p.entropy for p in parts), sum(p.kl for p in parts),
                            max((p.max_abs for p in parts), default=0.0))

    def metrics(self) -> dict[str, float]:
        """``entropy`` (mean nats per token), ``mismatch/kl`` (mean k3 per token), ``mismatch/max_abs``."""
        tokens = max(self.tokens, 1.0)
        return {"entropy": self.entropy / tokens, "mismatch/kl": self.kl / tokens, "mismatch/max_abs": self.max_abs}


def split_measured(metrics: Mapping[str, float]) -> tuple[LogprobStats, dict[str, float]]:
    """A train step's metrics -> the statistics its forward measured (``measured/*``) and the rest."""
    rest = {k: v for k, v in metrics.items() if not k.startswith(MEASURED)}
    return LogprobStats.from_sums(metrics), rest
