"""What the SFT loop trains on: packed bins in a deterministic, resumable order.

The order depends only on (seed, step): step s of epoch e takes the next ``global_batch_size`` bins
of a permutation seeded by (seed, e), and rank r of R takes every R-th of them. So a resumed run sees
exactly the batches the uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np

from nemo_ext.data.batch import PackedBatch, pack_sequences


def steps_per_epoch(num_bins: int, global_batch_size: int) -> int:
    if num_bins < global_batch_size:
        raise ValueError(f"the data has {num_bins} packed bins, fewer than trainer.global_batch_size="
                         f"{global_batch_size}")
    return num_bins // global_batch_size


class BatchSchedule:
    """Which packed bins each data-parallel rank trains at each step: a fresh permutation per epoch,
    cut into global batches, each dealt round-robin to the ``world_size`` data-parallel ranks."""

    def __init__(self, num_bins: int, global_batch_size: int, micro_batch_size: int, seed: int,
                 rank: int, world_size: int):
        if global_batch_size % (world_size * micro_batch_size):
            raise ValueError(
                f"trainer.global_batch_size={global_batch_size} must be a multiple of data-parallel size "
                f"({world_size}) x trainer.micro_batch_size ({micro_batch_size})")
        self.num_bins, self.global_batch_size, self.micro_batch_size = num_bins, global_batch_size, micro_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.steps_per_epoch = steps_per_epoch(num_bins, global_batch_size)

    def bins(self, step: int) -> list[list[int]]:
        """Bin indices of this rank's micro-batches at optimizer step ``step``."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_bins)
        start = offset * self.global_batch_size
        mine = order[start:start + self.global_batch_size][self.rank::self.world_size].tolist()
        return [mine[i:i + self.micro_batch_size] for i in range(0, len(mine), self.micro_batch_size)]


def micro_batch(bins: list[dict]) -> PackedBatch:
    """Concatenate packed bins (rows of the Parquet shards) into one ``PackedBatch``."""
    ids, masks = [], []
    for b in bins:
        bounds = [*b["seq_start_id"].tolist(), len(b["input_ids"])]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            ids.append(b["input_ids"][lo:hi].tolist())
            masks.append(b["loss_mask"][lo:hi].tolist())
    return pack_sequences(ids, masks)
