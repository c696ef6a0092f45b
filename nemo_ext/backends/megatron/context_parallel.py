"""Context parallelism for packed batches: each of CP ranks holds a share of every sequence's tokens.

Layout (the load-balanced one of Transformer Engine's THD context parallelism, so both attention
paths take the same shards): every sequence is padded to a multiple of 2 x CP tokens and cut into
2 x CP equal chunks; rank r holds chunks r and 2 CP - 1 - r of each. Under causal attention an early
chunk is cheap and a late one dear, so every rank gets the same work. Padding tokens sit at the end
of their sequence, where no real token attends to them, and their log-probs are dropped.

Attention without TE (``cp_attention``): all-gather the keys and values of the CP group (after RoPE,
which each rank applies to its own tokens from their positions), then each local query chunk attends
to the prefix of its sequence that ends where the chunk ends (``varlen.packed_causal_attention`` with
separate key boundaries, causality aligned at the end). The backward of the all-gather is a
reduce-scatter, so each rank gets the key/value gradients of its own tokens from every rank. This is
the all-gather form of context parallelism (as used for Llama 3's long-context training), simpler than
TE's ring exchange and close to it while the GQA keys and values are small next to the queries.

Log-probs: each rank computes those of its tokens; ``gather_logprobs`` all-gathers them and puts them
back in the batch's order, so the loss function sees the whole batch on every CP rank, as without CP.
Its backward takes this rank's slice of the (identical) gradient without summing: every CP rank
computes the same loss, and its gradient reaches the parameters through this rank's tokens only; the
data-parallel reduction over DP x CP (megatron's DDP) then adds the ranks' shares.

``plan_shard`` is pure index arithmetic on the host, once per micro-batch; the two autograd functions
are the only collectives. CPU tests check the plan and the attention against unsplit attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_ext.backends.varlen import packed_causal_attention
from nemo_ext.data.batch import cu_seqlens_of

# torch >= 2.13 renames all_gather_into_tensor (deprecated there) to all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class CPShard:
    """One CP rank's share of a packed row of ``total`` tokens (original + padding).

    token_index:       [total / CP] int64, row positions of this rank's tokens, in its local order.
    row_lengths:       the row's sequences after padding (plus one padding sequence if needed).
    cu_seqlens_q:      [2 S + 1] int32, this rank's chunks as separate query segments.
    max_seqlen_q:      longest chunk.
    kv_index:          [K] int64, for each chunk the keys of its sequence prefix, as indices into the
                       CP all-gather of the keys (rank-major: rank r's tokens at r x total / CP ...).
    cu_seqlens_k:      [2 S + 1] int32, the key segments in ``kv_index``.
    max_seqlen_k:      longest key segment.
    original_rows:     [n] int64, row positions of the batch's n tokens.
    original_in_gathered: [n] int64, where each of the batch's n tokens sits in that all-gather.
    """

    token_index: torch.Tensor
    row_lengths: list[int]
    cu_seqlens_q: torch.Tensor
    max_seqlen_q: int
    kv_index: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_k: int
    original_rows: torch.Tensor
    original_in_gathered: torch.Tensor

    def to(self, device: torch.device) -> CPShard:
        move = lambda t: t.to(device, non_blocking=True)
        return CPShard(move(self.token_index), self.row_lengths, move(self.cu_seqlens_q), self.max_seqlen_q,
                       move(self.kv_index), move(self.cu_seqlens_k), self.max_seqlen_k,
                       move(self.original_rows), move(self.original_in_gathered))


def padded_sequence_lengths(lengths: list[int], cp: int) -> list[int]:
    """Each length rounded up to a multiple of 2 x ``cp``."""
    return [-(-n // (2 * cp)) * 2 * cp for n in lengths]


def cp_row_length(lengths: list[int], cp: int, multiple: int = 1) -> int:
    """The shortest padded row for these sequences: their padded lengths summed, rounded up so that
    each rank's share (row / CP) is a multiple of ``multiple`` (sequence parallelism: TP)."""
    step = cp * math.lcm(2, multiple)  # a share is two chunks per sequence: even, and a multiple of TP
    return -(-sum(padded_sequence_lengths(lengths, cp)) // step) * step


def _rank_positions(row_lengths: list[int], offsets: list[int], cp: int, rank: int) -> torch.Tensor:
    pieces = []
    for start, length in zip(offsets, row_lengths, strict=True):
        chunk = length // (2 * cp)
        for c in (rank, 2 * cp - 1 - rank):
            pieces.append(torch.arange(start + c * chunk, start + (c + 1) * chunk))
    return torch.cat(pieces)


def plan_shard(lengths: list[int], total: int, cp: int, rank: int) -> CPShard:
    """Rank ``rank``'s share of a row holding sequences of ``lengths`` (in order), padded to ``total``
    tokens (``cp_row_length`` or more, a multiple of 2 x ``cp``)."""
    padded = padded_sequence_lengths(lengths, cp)
    rest = total - sum(padded)
    if rest < 0 or rest % (2 * cp):
        raise ValueError(f"a row of {total} tokens cannot hold sequences padded to {sum(padded)} tokens "
                         f"in multiples of 2 x CP = {2 * cp}")
    row_lengths = padded + ([rest] if rest else [])
    offsets = [0]
    for n in row_lengths[:-1]:
        offsets.append(offsets[-1] + n)
    gathered_rows = torch.cat([_rank_positions(row_lengths, offsets, cp, r) for r in range(cp)])
    share = total // cp
    row_to_gathered = torch.empty(total, dtype=torch.long)
    row_to_gathered[gathered_rows] = torch.arange(total)

    q_lengths, k_ends, kv_pieces = [], [], []
    for start, length in zip(offsets, row_lengths, strict=True):
        chunk = length // (2 * cp)
        for c in (rank, 2 * cp - 1 - rank):
            end = (c + 1) * chunk  # the chunk's queries see their sequence up to here
            q_lengths.append(chunk)
            k_ends.append(end)
            kv_pieces.append(row_to_gathered[start:start + end])
    original_rows = torch.cat([torch.arange(o, o + n) for o, n in zip(offsets[:len(lengths)], lengths, strict=True)])
    return CPShard(
        token_index=gathered_rows[rank * share:(rank + 1) * share],
        row_lengths=row_lengths,
        cu_seqlens_q=cu_seqlens_of(q_lengths), max_seqlen_q=max(q_lengths),
        kv_index=torch.cat(kv_pieces),
        cu_seqlens_k=cu_seqlens_of(k_ends), max_seqlen_k=max(k_ends),
        original_rows=original_rows, original_in_gathered=row_to_gathered[original_rows],
    )


def attend_local(q_THD: torch.Tensor, k_gathered: torch.Tensor, v_gathered: torch.Tensor, shard: CPShard,
                 scale: float | None) -> torch.Tensor:
    """This rank's queries [T/CP, H, D] against the CP group's gathered keys / values [T, G, D].
    Pure (no collective): the all-gather is the caller's."""
    k, v = k_gathered.index_select(0, shard.kv_index), v_gathered.index_select(0, shard.kv_index)
    return packed_causal_attention(q_THD, k, v, shard.cu_seqlens_q, shard.max_seqlen_q, scale,
                                   cu_seqlens_k=shard.cu_seqlens_k, max_seqlen_k=shard.max_seqlen_k)


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 in rank order; backward: reduce-scatter (each rank's rows summed).
    megatron's ``gather_from_sequence_parallel_region`` does the same on any group, but this module
    stays pure torch so that CPU CI runs it over gloo."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad.contiguous(), group=ctx.group)
        return out, None


def cp_attention(q_THD, k_TGD, v_TGD, shard: CPShard, scale: float | None, group) -> torch.Tensor:
    """Causal attention of this rank's packed tokens under context parallelism over ``group``."""
    return attend_local(q_THD, _AllGather.apply(k_TGD, group), _AllGather.apply(v_TGD, group), shard, scale)


class _GatherInBatchOrder(torch.autograd.Function):
    """[T/CP] per-rank values -> [n] the batch's tokens in order, on every rank. Backward: this rank's
    slice of the gradient, not summed over ranks (they all computed the same loss)."""

    @staticmethod
    def forward(ctx, local_T, original_in_gathered, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        gathered = local_T.new_empty(world * local_T.shape[0])
        _all_gather_single(gathered, local_T.contiguous(), group=group)
        ctx.save_for_backward(original_in_gathered)
        ctx.rows = (rank * local_T.shape[0], (rank + 1) * local_T.shape[0], gathered.shape[0])
        return gathered[original_in_gathered]

    @staticmethod
    def backward(ctx, grad_n):
        (original_in_gathered,) = ctx.saved_tensors
        lo, hi, total = ctx.rows
        grad_gathered = grad_n.new_zeros(total).index_copy_(0, original_in_gathered, grad_n)
        return grad_gathered[lo:hi], None, None


def gather_logprobs(local_T: torch.Tensor, shard: CPShard, group) -> torch.Tensor:
    """This rank's per-token values [T/CP] -> the batch's n tokens in its own order (every rank)."""
    return _GatherInBatchOrder.apply(local_T, shard.original_in_gathered, group)


def scatter_row(values_n: torch.Tensor, shard: CPShard, fill: int | float = 0) -> torch.Tensor:
    """The batch's per-token values [n] -> this rank's share [T/CP] of the padded row, ``fill`` at the
    padding (input ids, targets)."""
    row = values_n.new_full((sum(shard.row_lengths),), fill)
    row[shard.original_rows] = values_n
    return row[shard.token_index]


def local_positions(shard: CPShard) -> torch.Tensor:
    """[T/CP] int64 position of each of this rank's tokens within its (padded) sequence, for RoPE."""
    row = torch.cat([torch.arange(n, device=shard.token_index.device) for n in shard.row_lengths])
    return row[shard.token_index]
