"""Data parallelism of the GRPO loop: every rank holds every group; each rolls out and trains a share.

Rollouts are split over all ``W`` ranks, whatever the trainer's layout: each rank generates and
scores its share of a step's prompts (prompt i on rank i mod W) with its own vLLM engine on its own
GPU, with the seeds the single-process loop would use, then the ranks exchange the scored groups. So
every rank holds the same groups in the same order and runs the same loop logic, and takes the same
decisions: dynamic sampling, the prompt schedule's pass rates, advantages, the loss normalizer,
metrics, the temperature controller.

Training is split over the backend's data-parallel *replicas* (``Backend.dp_rank`` /
``dp_world_size``): with the torch backend every rank is one; with megatron the tensor, pipeline and
context-parallel ranks of one replica take the same micro-batches. Each replica takes an equal number
of the step's micro-batches, balanced by tokens (every FSDP forward is a collective, so the counts
must match), padded with zero-weight copies where the count does not divide. Sums measured on a
replica's share by the no-grad log-prob pass (entropy and mismatch) are added up over the replicas,
each counted once (the train step reduces its own metrics over them). With one process every method
is the identity and the loop is the single-process one.

Exchanges go through ``all_gather_object`` (pickled Python objects): rollouts are token lists, small
next to the weights, and generation dominates a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

from nemo_ext.data.batch import PackedBatch

if TYPE_CHECKING:
    from nemo_ext.backends.base import Backend

T = TypeVar("T")


@dataclass(frozen=True)
class RankShare:
    """This process's place among the loop's ``world`` ranks (rollouts) and among the trainer's
    ``replicas`` data-parallel model replicas (training); the defaults: one process."""

    rank: int = 0
    world: int = 1
    replica: int = 0  # Backend.dp_rank
    replicas: int = 1  # Backend.dp_world_size
    replica_group: object = None  # Backend.dp_group (None: the default group, every rank a replica)

    @classmethod
    def current(cls, backend: Backend | None = None) -> RankShare:
        """The running process group's share; ``backend`` adds its replica layout (without it every
        rank is a replica)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend is None:
            return cls(rank, world, rank, world)
        return cls(rank, world, backend.dp_rank, backend.dp_world_size, backend.dp_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, n: int) -> list[int]:
        """This rank's positions among ``n`` items (prompts, problems): rank, rank + W, ..."""
        return list(range(self.rank, n, self.world))

    def all_gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, mine: Sequence[T], n: int) -> list[T]:
        """The inverse of ``indices``: each rank's items for its positions -> all ``n`` in order, on
        every rank."""
        if self.world == 1:
            return list(mine)
        out: list = [None] * n
        for rank, items in enumerate(self.all_gather(list(mine))):
            out[rank::self.world] = items
        return out

    def split_micro_batches(self, micro_batches: Sequence[PackedBatch]) -> list[PackedBatch]:
        """This replica's micro-batches: ceil(M / R) on every replica, balanced by tokens (largest
        first, each to the least-loaded replica with room), in their original order, then zero-weight
        copies of the smallest one where this replica got fewer."""
        R = self.replicas
        if R == 1 or not micro_batches:
            return list(micro_batches)
        per_replica = -(-len(micro_batches) // R)
        order = sorted(range(len(micro_batches)), key=lambda i: (-micro_batches[i].num_tokens, i))
        loads, assigned = [0] * R, [[] for _ in range(R)]
        for i in order:
            r = min((r for r in range(R) if len(assigned[r]) < per_replica), key=lambda r: (loads[r], r))
            assigned[r].append(i)
            loads[r] += micro_batches[i].num_tokens
        mine = [micro_batches[i] for i in sorted(assigned[self.replica])]
        return mine + [zero_weight_copy(micro_batches[order[-1]]) for _ in range(per_replica - len(mine))]

    def replica_gather(self, obj: T) -> list[T]:
        """``obj`` of every replica, in replica order (the ranks of one replica hold equal values,
        measured on the same micro-batches; each replica is counted once)."""
        if self.replicas == 1:
            return [obj]
        out: list = [None] * self.replicas
        dist.all_gather_object(out, obj, group=self.replica_group)
        return out


def zero_weight_copy(batch: PackedBatch) -> PackedBatch:
    """``batch`` with no trained token: it runs through forward and backward (a collective under
    FSDP) and adds nothing to the loss, the gradient or any token statistic."""
    return replace(batch, loss_mask=torch.zeros_like(batch.loss_mask),
                   token_fields={k: torch.zeros_like(v) for k, v in batch.token_fields.items()})
