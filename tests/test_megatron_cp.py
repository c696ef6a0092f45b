"""Context parallelism of packed batches (megatron backend, pure torch): the shard plan, attention
over shards equal to unsplit attention, and the collectives' autograd over two gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nemo_ext.backends.megatron.context_parallel import (
    attend_local,
    cp_attention,
    cp_row_length,
    gather_logprobs,
    local_positions,
    plan_shard,
    scatter_row,
)
from nemo_ext.backends.varlen import packed_causal_attention
from nemo_ext.data.batch import cu_seqlens_of
from tests.helpers import run_gloo_ranks

LENGTHS = [5, 3, 8]  # padded to multiples of 2 x CP = 4: 8, 4, 8


def _row_cu(shard) -> torch.Tensor:
    return cu_seqlens_of(shard.row_lengths)


def test_plan_gives_each_rank_chunks_r_and_2cp_minus_1_minus_r():
    total = cp_row_length(LENGTHS, cp=2)
    assert total == 20
    shards = [plan_shard(LENGTHS, total, cp=2, rank=r) for r in (0, 1)]
    # sequence 0 occupies rows 0..7 (chunks of 2), sequence 1 rows 8..11 (chunks of 1), sequence 2 rows 12..19
    assert shards[0].token_index.tolist() == [0, 1, 6, 7, 8, 11, 12, 13, 18, 19]
    assert shards[1].token_index.tolist() == [2, 3, 4, 5, 9, 10, 14, 15, 16, 17]
    assert shards[0].cu_seqlens_q.tolist() == [0, 2, 4, 5, 6, 8, 10]
    assert shards[0].cu_seqlens_k.tolist() == [0, 2, 10, 11, 15, 17, 25]  # chunk ends 2, 8, 1, 4, 2, 8
    assert (shards[0].max_seqlen_q, shards[0].max_seqlen_k) == (2, 8)
    assert shards[0].original_rows.tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19]
    ids = torch.arange(100, 116)
    # batch tokens 100..104 at rows 0..4, 105..107 at rows 8..10, 108..115 at rows 12..19; padding 0
    assert scatter_row(ids, shards[1]).tolist() == [102, 103, 104, 0, 106, 107, 110, 111, 112, 113]
    assert local_positions(shards[1]).tolist() == [2, 3, 4, 5, 1, 2, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="multiples of 2 x CP = 4"):
        plan_shard(LENGTHS, 18, cp=2, rank=0)


def test_row_length_keeps_shares_divisible_by_tensor_parallel_size():
    # padded sum 20; shares of row / 2 must be multiples of lcm(2, 4) = 4 -> row 24, one 4-token pad sequence
    assert cp_row_length(LENGTHS, cp=2, multiple=4) == 24
    shard = plan_shard(LENGTHS, 24, cp=2, rank=1)
    assert shard.row_lengths == [8, 4, 8, 4] and shard.token_index.numel() == 12


@pytest.mark.parametrize("cp", [2, 3])
def test_attention_over_shards_equals_unsplit_attention_values_and_gradients(cp):
    torch.manual_seed(0)
    total = cp_row_length(LENGTHS, cp)
    shards = [plan_shard(LENGTHS, total, cp, r) for r in range(cp)]
    q, k, v = (torch.randn(total, h, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
    weight = torch.randn(total, 4, 8, dtype=torch.float64)
    reference = packed_causal_attention(q, k, v, _row_cu(shards[0]), max(shards[0].row_lengths), 0.3)
    ref_grads = torch.autograd.grad((reference * weight).sum(), (q, k, v))

    gathered_k = torch.cat([k[s.token_index] for s in shards])  # what the all-gather returns: rank order
    gathered_v = torch.cat([v[s.token_index] for s in shards])
    outs = [attend_local(q[s.token_index], gathered_k, gathered_v, s, 0.3) for s in shards]
    for s, out in zip(shards, outs, strict=True):
        torch.testing.assert_close(out, reference[s.token_index].detach(), rtol=1e-10, atol=1e-10)
    loss = sum((out * weight[s.token_index]).sum() for s, out in zip(shards, outs, strict=True))
    for got, want in zip(torch.autograd.grad(loss, (q, k, v)), ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _worker(rank: int, out_dir: str):
    q, k, v, g = _cp_inputs()
    total = q.shape[0]
    shard = plan_shard(LENGTHS, total, 2, rank)
    mine = [x[shard.token_index].clone().requires_grad_(True) for x in (q, k, v)]
    out = cp_attention(*mine, shard, 0.3, dist.group.WORLD)
    per_token = gather_logprobs(out.sum(dim=(1, 2)), shard, dist.group.WORLD)  # [n], batch order
    (per_token * g).sum().backward()
    torch.save((per_token.detach(), *(x.grad for x in mine)), f"{out_dir}/rank{rank}.pt")


def _cp_inputs():
    torch.manual_seed(1)
    total = cp_row_length(LENGTHS, 2)
    return (*(torch.randn(total, h, 8, dtype=torch.float64) for h in (4, 2, 2)),
            torch.randn(sum(LENGTHS), dtype=torch.float64))


def test_two_cp_ranks_give_unsplit_values_and_gradients(tmp_path):
    """Real collectives (gloo): the all-gather's reduce-scatter backward and the batch-order gather."""
    run_gloo_ranks(_worker, tmp_path)
    q, k, v, g = (x.requires_grad_(True) if x.dim() > 1 else x for x in _cp_inputs())
    shards = [plan_shard(LENGTHS, q.shape[0], 2, r) for r in (0, 1)]
    ref = packed_causal_attention(q, k, v, _row_cu(shards[0]), 8, 0.3).sum(dim=(1, 2))[shards[0].original_rows]
    (ref * g).sum().backward()
    for rank, shard in enumerate(shards):
        per_token, gq, gk, gv = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(per_token, ref.detach(), rtol=1e-10, atol=1e-10)
        for got, full in ((gq, q.grad), (gk, k.grad), (gv, v.grad)):
            torch.testing.assert_close(got, full[shard.token_index], rtol=1e-10, atol=1e-10)
