"""First-fit-decreasing (FFD) bin packing of SFT samples into fixed-size token bins.

Packing lays several short samples end to end in one training row so that almost no token slot is
padding (the AceReason papers do not publish their packing; FFD is one of the strategies of
NeMo's sequence-packing utilities). FFD sorts the items by length, longest first, and puts each
one into the first (lowest-numbered) bin with room for it; it uses at most 11/9 OPT + 6/9 bins
(Dosa 2007) and, on long-tailed length distributions, comes within a fraction of a percent of the
lower bound sum(lengths) / bin_size (bench/packing.py).

The "first bin with room" query is answered by a max segment tree over the bins' free space, so
packing n items into m bins costs O(n log n) instead of the O(n * m) of a linear scan. Bins not yet
opened sit in the tree with free space = bin_size, so opening a bin needs no special case.

Left out: best-fit and exact (branch-and-bound) packing, which gain little over FFD here, and
balancing bins by attention cost (sum of squared lengths).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, bin_size: int) -> list[list[int]]:
    """Pack items of the given lengths into as few bins of ``bin_size`` as FFD finds.

    lengths:  [n] item lengths in tokens, each in [1, bin_size].
    bin_size: capacity of a bin in tokens.
    Returns the bins in the order they were opened; bin b is the list of item indices (into
    ``lengths``) it holds, longest first. Ties keep input order, so the result is deterministic.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    n = len(lengths)
    if n == 0:
        return []
    if lengths.min() < 1 or lengths.max() > bin_size:
        raise ValueError(
            f"every length must be in [1, bin_size={bin_size}], got min {lengths.min()}, max {lengths.max()}"
        )

    order = np.argsort(-lengths, kind="stable")
    leaves = 1 << max(0, (n - 1).bit_length())  # at most n bins are ever opened
    free = [bin_size] * (2 * leaves)  # free[node] = max free space of the bins below node
    bins: list[list[int]] = []
    for item, size in zip(order.tolist(), lengths[order].tolist(), strict=True):
        node = 1
        while node < leaves:  # descend towards the leftmost leaf with room
            node = 2 * node if free[2 * node] >= size else 2 * node + 1
        b = node - leaves
        if b == len(bins):
            bins.append([])
        bins[b].append(item)
        free[node] -= size
        node //= 2
        while node:
            best = max(free[2 * node], free[2 * node + 1])
            if free[node] == best:  # ancestors above are unchanged too
                break
            free[node] = best
            node //= 2
    return bins


def pack_stream(lengths: Iterable[int], bin_size: int, buffer_size: int) -> Iterator[list[list[int]]]:
    """FFD over a stream, one buffer of ``buffer_size`` items at a time, in bounded memory.

    Yields, for each buffer, its bins as lists of global item indices (positions in the stream).
    The trade-off: bins never mix items of two buffers, so each buffer ends with a few part-filled
    bins that whole-stream FFD would have topped up. With buffers holding many bins' worth of
    items the loss is small (bench/packing.py measures it); memory and latency stay O(buffer_size).
    """
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    it = iter(lengths)
    offset = 0
    while buffer := list(islice(it, buffer_size)):
        yield [[offset + i for i in b] for b in first_fit_decreasing(buffer, bin_size)]
        offset += len(buffer)


def packing_efficiency(lengths: Sequence[int] | np.ndarray, num_bins: int, bin_size: int) -> float:
    """Fraction of the ``num_bins * bin_size`` token slots that hold a token."""
    return float(np.sum(lengths, dtype=np.int64)) / (num_bins * bin_size) if num_bins else 0.0
