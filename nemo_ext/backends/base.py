"""The interface every training backend implements, for SFT and RL alike.

The loops (``nemo_ext.sft.loop``, ``nemo_ext.rl.grpo``) see only this: they hand over packed
micro-batches and a loss function, and never learn whether the policy is sharded by FSDP2, DDP or
Megatron's tensor and pipeline parallelism.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.data.batch import PackedBatch

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``loss_fn(logprobs_T, batch) -> (loss, metrics)``, or ``loss_fn(logprobs_T, batch, entropy_T)`` when
``train_step`` is asked ``with_entropy``.

logprobs_T: [T] float32, log-probability of ``batch.targets`` under the temperature-scaled policy
(0 where ``batch.loss_mask`` is 0). entropy_T: [T] float32 entropy (nats) of that distribution at each
token, without gradient, from the same forward. The returned loss is this micro-batch's share of the
objective, already divided by the *global* normalizer (all micro-batches of the step on all
data-parallel ranks), so the shares add up exactly to the full-batch objective whatever the
micro-batching.
metrics: name -> scalar tensors, reduced over micro-batches and data-parallel ranks for logging
(``reduce_metric``): summed, except those whose name ends in ``/max``, which take the maximum.
"""

MAX_SUFFIX = "/max"  # a metric named ``<name>/max`` is reduced by maximum, not summed


def call_loss(loss_fn: LossFn, logprobs_T: torch.Tensor, batch: PackedBatch,
              entropy_T: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss_fn`` with the entropies where the forward measured them (``with_entropy``), else without."""
    return loss_fn(logprobs_T, batch) if entropy_T is None else loss_fn(logprobs_T, batch, entropy_T)


def reduce_metric(name: str, total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """One micro-batch's metric ``value`` (scalar) added into the running ``total`` (None: the first)."""
    value = value.detach().float()
    if total is None:
        return value
    return torch.maximum(total, value) if name.endswith(MAX_SUFFIX) else total + value


def all_reduce_metrics(values_K: torch.Tensor, names: list[str], group=None) -> torch.Tensor:
    """[K] float32, ``names[k]``'s value of this rank -> reduced over ``group``'s ranks like the
    micro-batches (``reduce_metric``), in place; every rank passes the same names."""
    by_max = [name.endswith(MAX_SUFFIX) for name in names]
    for op, wanted in ((dist.ReduceOp.SUM, False), (dist.ReduceOp.MAX, True)):
        index = [k for k, m in enumerate(by_max) if m == wanted]
        if index:
            part = values_K[index]
            dist.all_reduce(part, op=op, group=group)
            values_K[index] = part
    return values_K


class Backend(ABC):
    """A policy that trains on packed micro-batches and exports Hugging Face weights.

    One instance per process. ``dp_rank`` / ``dp_world_size`` tell the loop which share of the data
    this process trains on (the tensor / pipeline / context-parallel ranks of one model replica share
    it). Every backend sets ``hf_config`` and ``tokenizer`` (both loaded by
    ``nemo_ext.models.hf_config``). ``temperature`` is a required argument of ``train_step`` and
    ``logprobs``: a log-prob at the wrong temperature is silently wrong, so no call may forget it.
    """

    dp_rank: int = 0
    dp_world_size: int = 1
    dp_group = None  # the data-parallel process group (None: the default group, every rank a replica)
    device = torch.device("cpu")
    hf_config: PretrainedConfig  # the policy's Hugging Face config (shape for FLOPs, export)
    tokenizer: PreTrainedTokenizerBase  # the policy's tokenizer (RL tokenizes prompts with it; export writes it)

    def dp_sum(self, value: float) -> float:
        """``value`` summed over the data-parallel ranks: each model replica counted once."""
        if self.dp_world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return float(t.item())

    @abstractmethod
    def train_step(self, micro_batches: list[PackedBatch], loss_fn: LossFn, temperature: float,
                   with_entropy: bool = False) -> dict:
        """Forward + backward on every micro-batch, then one optimizer and scheduler step.

        temperature: the log-probs handed to ``loss_fn`` are those of softmax(logits / temperature)
        (SFT: 1.0; RL: the rollouts' sampling temperature).
        with_entropy: the forward also computes each token's entropy from the logits it already has
        (no gradient, nothing recomputed) and calls ``loss_fn(logprobs_T, batch, entropy_T)``.

        Returns floats: ``loss`` (summed shares, all ranks), ``grad_norm`` (before clipping), ``lr``,
        plus the ``metrics`` of ``loss_fn`` reduced over micro-batches and ranks (``LossFn``).
        """

    @abstractmethod
    def logprobs(
        self, micro_batches: list[PackedBatch], temperature: float
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """No-grad log-probs and entropies: per micro-batch ``(logprobs_T, entropy_T)`` on the CPU.

        entropy_T[t] is the entropy (nats) of the temperature-scaled next-token distribution at t.
        """

    @abstractmethod
    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) tensors under Hugging Face names, one at a time: for export and for
        syncing weights into the rollout engine without a disk round trip."""

    @abstractmethod
    def save(self, path: Path, extra_state: dict) -> None:
        """Write model, optimizer, scheduler and ``extra_state`` (data position, RNG) under ``path``.
        Collective: every rank calls it. ``path`` does not exist yet; the caller renames it into place."""

    @abstractmethod
    def load(self, path: Path) -> dict:
        """Restore what ``save`` wrote; returns its ``extra_state``."""

    @abstractmethod
    def export_hf(self, path: Path) -> None:
        """Write a Hugging Face directory (safetensors + config + tokenizer) that transformers and
        vLLM load."""

    @abstractmethod
    def reset_optimizer(self, schedule: LRSchedule) -> None:
        """Start a fresh optimizer on ``schedule`` (an RL stage begins with its own learning rate)."""
