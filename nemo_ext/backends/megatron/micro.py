"""Packed micro-batches as megatron's model takes them: padded THD rows with their ``PackedSeqParams``
(and, for the local spec, the RoPE tables), or, under context parallelism, this rank's share of each
row (``context_parallel.py``). Every token belongs to a sequence of ``cu_seqlens``: padding forms one
extra, untrained sequence at the end of a row (CP = 1) or sits at the end of each sequence (CP > 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from nemo_ext.backends.megatron.context_parallel import (
    CPShard,
    cp_row_length,
    local_positions,
    plan_shard,
    scatter_row,
)
from nemo_ext.backends.megatron.layout import Layout
from nemo_ext.backends.megatron.model import PackedRotary
from nemo_ext.backends.varlen import rope_cos_sin
from nemo_ext.data.batch import PackedBatch, cu_seqlens_of


@dataclass
class Micro:
    """A packed batch as the model takes it: padded to the layout's multiple, on the GPU."""

    batch: PackedBatch  # the original (unpadded), on the GPU, for loss_fn
    input_ids: torch.Tensor  # [1, T_pad]
    position_ids: torch.Tensor  # [1, T_pad]
    targets: torch.Tensor  # [T_pad]
    packed: PackedSeqParams
    shard: CPShard | None = None  # with context parallelism: this rank's share (T_pad = row / CP)


def to_micro(batch: PackedBatch, length: int, device: torch.device,
             rope: tuple[int, float, torch.dtype] | None = None) -> Micro:
    """Pad to ``length`` tokens with one extra (untrained) sequence, so every token belongs to a
    sequence of ``cu_seqlens``. ``rope``: (head_dim, theta, dtype) of the local spec's RoPE tables."""
    batch = batch.to(device)
    pad = length - batch.num_tokens
    ids, pos, tgt, cu = batch.input_ids, batch.position_ids, batch.targets, batch.cu_seqlens.to(torch.int32)
    if pad:
        zeros = ids.new_zeros(pad)
        ids, tgt = torch.cat([ids, zeros]), torch.cat([tgt, zeros])
        pos = torch.cat([pos, torch.arange(pad, device=device)])
        cu = torch.cat([cu, cu.new_tensor([length])])
    max_len = max(batch.max_seqlen, pad)
    kw = dict(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len, max_seqlen_kv=max_len)
    if rope is None:
        packed = PackedSeqParams(**kw)
    else:  # local spec: RoPE tables for VarlenCoreAttention
        cos, sin = rope_cos_sin(pos, *rope)
        packed = PackedRotary(**kw, rope_cos=cos, rope_sin=sin)
    return Micro(batch, ids[None], pos[None], tgt, packed)


def to_cp_micro(batch: PackedBatch, row_length: int, cp: int, cp_rank: int, device: torch.device,
                rope: tuple[int, float, torch.dtype] | None) -> Micro:
    """This CP rank's share of ``batch`` laid out in a row of ``row_length`` tokens (context_parallel.py).
    ``rope`` None (TE): megatron's THD path with TE's attention, which take the same load-balanced shards
    with the padded row's boundaries."""
    shard = plan_shard(batch.seq_lengths, row_length, cp, cp_rank).to(device)
    batch = batch.to(device)
    ids, tgt, pos = scatter_row(batch.input_ids, shard), scatter_row(batch.targets, shard), local_positions(shard)
    if rope is None:
        cu = cu_seqlens_of(shard.row_lengths, device)
        longest = max(shard.row_lengths)
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                                 cu_seqlens_kv_padded=cu, max_seqlen_q=longest, max_seqlen_kv=longest)
    else:
        cos, sin = rope_cos_sin(pos, *rope)
        packed = PackedRotary(qkv_format="thd", cu_seqlens_q=shard.cu_seqlens_q, cu_seqlens_kv=shard.cu_seqlens_k,
                              max_seqlen_q=shard.max_seqlen_q, max_seqlen_kv=shard.max_seqlen_k,
                              rope_cos=cos, rope_sin=sin, cp_shard=shard)
    return Micro(batch, ids[None], pos[None], tgt, packed, shard)


def padded_lengths(num_tokens: list[int], multiple: int, same: bool) -> list[int]:
    """Each micro-batch's length rounded up to ``multiple``; with ``same`` (pipeline parallelism: the
    stages exchange fixed-shape activations) all of them padded to the longest."""
    lengths = [-(-n // multiple) * multiple for n in num_tokens]
    return [max(lengths)] * len(lengths) if same else lengths


def build_micros(micro_batches: list[PackedBatch], layout: Layout, pad_multiple: int, device: torch.device,
                 rope: tuple[int, float, torch.dtype] | None, cp_rank: int = 0) -> list[Micro]:
    """A step's micro-batches as this rank's model takes them: padded rows (CP = 1), or this CP rank's
    share of each (CP > 1); with pipeline parallelism all of one length."""
    same = layout.pp > 1
    if layout.cp == 1:
        lengths = padded_lengths([b.num_tokens for b in micro_batches], pad_multiple, same)
        return [to_micro(b, n, device, rope) for b, n in zip(micro_batches, lengths, strict=True)]
    rows = [cp_row_length(b.seq_lengths, layout.cp, pad_multiple) for b in micro_batches]
    rows = [max(rows)] * len(rows) if same else rows
    return [to_cp_micro(b, n, layout.cp, cp_rank, device, rope) for b, n in zip(micro_batches, rows, strict=True)]
