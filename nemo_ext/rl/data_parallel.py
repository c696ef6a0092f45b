"""Data parallelism of the GRPO loop: every rank holds every group; each rolls out and trains a share.

Each rank generates and scores its share of a step's prompts (prompt i on rank i mod W) with its own
vLLM engine, with the seeds the single-process loop would use, then the ranks exchange the scored
groups. So every rank holds the same groups in the same order and runs the same loop logic, and
takes the same decisions: dynamic sampling, the prompt schedule's pass rates, advantages, the loss
normalizer, metrics, the temperature controller. Only the forward / backward work is split: each
rank takes an equal number of the step's micro-batches, balanced by tokens (every FSDP forward is a
collective, so the counts must match), padded with zero-weight copies where the count does not
divide. Sums measured on a rank's share (the log-prob pass's entropy and mismatch) are added up over
the ranks. With one process every method is the identity and the loop is the single-process one.

Exchanges go through ``all_gather_object`` (pickled Python objects on the default group): rollouts
are token lists, small next to the weights, and generation dominates a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
import torch.distributed as dist

from nemo_ext.data.batch import PackedBatch

T = TypeVar("T")


@dataclass(frozen=True)
class RankShare:
    """This process's place among the loop's ``world`` data-parallel ranks."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> RankShare:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

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
        """This rank's micro-batches: ceil(M / W) on every rank, balanced by tokens (largest first,
        each to the least-loaded rank with room), in their original order, then zero-weight copies
        of the smallest one where this rank got fewer."""
        if self.world == 1 or not micro_batches:
            return list(micro_batches)
        per_rank = -(-len(micro_batches) // self.world)
        order = sorted(range(len(micro_batches)), key=lambda i: (-micro_batches[i].num_tokens, i))
        loads, assigned = [0] * self.world, [[] for _ in range(self.world)]
        for i in order:
            rank = min((r for r in range(self.world) if len(assigned[r]) < per_rank), key=lambda r: (loads[r], r))
            assigned[rank].append(i)
            loads[rank] += micro_batches[i].num_tokens
        mine = [micro_batches[i] for i in sorted(assigned[self.rank])]
        return mine + [zero_weight_copy(micro_batches[order[-1]]) for _ in range(per_rank - len(mine))]


def zero_weight_copy(batch: PackedBatch) -> PackedBatch:
    """``batch`` with no trained token: it runs through forward and backward (a collective under
    FSDP) and adds nothing to the loss, the gradient or any token statistic."""
    return replace(batch, loss_mask=torch.zeros_like(batch.loss_mask),
                   token_fields={k: torch.zeros_like(v) for k, v in batch.token_fields.items()})
