"""The GRPO loop's data-parallel helpers (pure parts): shares of prompts and micro-batches, the
in-order gather, zero-weight padding, and merged log-prob statistics."""

from __future__ import annotations

import pytest
import torch

from nemo_ext.data.batch import pack_sequences
from nemo_ext.rl.data_parallel import RankShare, zero_weight_copy
from nemo_ext.rl.experience import logprob_pass_stats
from nemo_ext.rl.logprob_stats import LogprobStats
from nemo_ext.rl.losses import ADVANTAGES, ROLLOUT_LOGPROBS, WEIGHTS
from tests.helpers import run_gloo_ranks


def _mb(n_tokens: int, value: float = 1.0):
    fields = {ADVANTAGES: [[value] * n_tokens], WEIGHTS: [[1.0] * n_tokens], ROLLOUT_LOGPROBS: [[-0.5] * n_tokens]}
    return pack_sequences([list(range(1, n_tokens + 1))], [[1] * n_tokens], fields)


def test_one_rank_is_the_identity():
    share, mbs = RankShare(), [_mb(3), _mb(5)]
    assert share.indices(4) == [0, 1, 2, 3] and share.gather(["a", "b"], 2) == ["a", "b"]
    assert share.split_micro_batches(mbs) == mbs and share.all_gather(7) == [7]


def test_micro_batches_split_evenly_balanced_and_padded_with_zero_weight_copies():
    mbs = [_mb(n) for n in (9, 2, 7, 4, 3)]  # 25 tokens, 5 micro-batches over 2 ranks: 3 each
    shares = [RankShare(r, 2, r, 2).split_micro_batches(mbs) for r in (0, 1)]
    assert [len(s) for s in shares] == [3, 3]
    # largest first to the least loaded: 9 -> r0, 7 -> r1, 4 -> r1, 3 -> r0, 2 -> r1 (r0 9+3=12, r1 7+4+2=13)
    assert [mb.num_tokens for mb in shares[0][:2]] == [9, 3] and [mb.num_tokens for mb in shares[1]] == [2, 7, 4]
    pad = shares[0][2]
    assert pad.num_tokens == 2 and pad.num_loss_tokens == 0 and not pad.token_fields[ADVANTAGES].any()
    real = [mb for s in shares for mb in s if mb.num_loss_tokens]
    assert sorted(id(mb) for mb in real) == sorted(id(mb) for mb in mbs)  # each exactly once, untouched
    assert mbs[1].num_loss_tokens == 1  # the padding is a copy: the original keeps its loss mask (2 tokens, 1 target)


def test_ranks_of_one_replica_train_the_same_micro_batches():
    # megatron at TP = 2 on 4 ranks: ranks 0, 1 form replica 0 and ranks 2, 3 replica 1
    mbs = [_mb(n) for n in (9, 2, 7, 4, 3)]
    shares = [RankShare(r, 4, r // 2, 2).split_micro_batches(mbs) for r in range(4)]
    assert [[mb.num_tokens for mb in s] for s in shares] == [[9, 3, 2], [9, 3, 2], [2, 7, 4], [2, 7, 4]]
    assert shares[0][0] is shares[1][0] and shares[0][2].num_loss_tokens == 0  # shared; a zero-weight pad
    assert RankShare(1, 2, 0, 1).split_micro_batches(mbs) == mbs  # TP = 2 on 2 ranks: one replica trains all
    assert RankShare(3, 4, 1, 2).indices(8) == [3, 7]  # rollouts still go by rank


def test_zero_weight_copy_adds_nothing_to_log_prob_statistics():
    mb = _mb(4)
    logp, entropy = torch.full((4,), -0.7), torch.full((4,), 1.5)
    alone = logprob_pass_stats([mb], [(logp, entropy)])
    padded = LogprobStats.merge([alone, logprob_pass_stats([zero_weight_copy(mb)], [(logp * 3, entropy * 2)])])
    assert padded.metrics() == alone.metrics() and padded.tokens == 3  # 3 trained targets in a 4-token row


def test_merged_statistics_equal_one_pass_over_all_micro_batches():
    mbs = [_mb(3), _mb(6), _mb(5)]
    outs = [(torch.linspace(-1, -0.1, mb.num_tokens), torch.linspace(0.2, 2.0, mb.num_tokens)) for mb in mbs]
    whole = logprob_pass_stats(mbs, outs).metrics()
    parts = LogprobStats.merge([logprob_pass_stats(mbs[:1], outs[:1]), logprob_pass_stats(mbs[1:], outs[1:])])
    for key, value in whole.items():
        assert abs(parts.metrics()[key] - value) < 1e-12, key
    assert whole["mismatch/max_abs"] > 0


def _gather_worker(rank: int, out_dir: str):
    share = RankShare.current()
    items = [f"p{i}" for i in range(5)]
    mine = share.indices(len(items))
    gathered = share.gather([items[i].upper() for i in mine], len(items))
    torch.save((mine, gathered), f"{out_dir}/rank{rank}.pt")


def test_two_ranks_gather_their_shares_back_in_order(tmp_path):
    run_gloo_ranks(_gather_worker, tmp_path)
    (mine0, all0), (mine1, all1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (mine0, mine1) == ([0, 2, 4], [1, 3])
    assert all0 == all1 == ["P0", "P1", "P2", "P3", "P4"]


def test_each_rank_sees_only_its_own_gpu():
    from nemo_ext.rl.setup import rank_visible_devices

    assert rank_visible_devices(3, None) == "3"  # all GPUs visible: the rank's index
    assert rank_visible_devices(1, "4,5,6,7") == "5"  # a node-level selection: the rank's entry
    assert rank_visible_devices(2, "6") == "6"  # SLURM's one GPU per task: kept
    with pytest.raises(RuntimeError, match="local rank 2 has no GPU: CUDA_VISIBLE_DEVICES='0,1' lists 2"):
        rank_visible_devices(2, "0,1")


def _replica_worker(rank: int, out_dir: str):
    """Ranks 0, 1 of 4 form replica 0 (a TP pair), ranks 2, 3 replica 1; each rank's replica group
    holds the ranks of the same TP position, as megatron's data-parallel groups do."""
    import torch.distributed as dist

    groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]  # megatron's DP groups for TP = 2
    share = RankShare(rank, 4, rank // 2, 2, groups[rank % 2])
    stats = LogprobStats(tokens=10.0 * (rank // 2 + 1), entropy=1.0, kl=0.5, max_abs=0.1 * (rank // 2 + 1))
    torch.save(LogprobStats.merge(share.replica_gather(stats)), f"{out_dir}/rank{rank}.pt")


def test_statistics_count_each_replica_once(tmp_path):
    run_gloo_ranks(_replica_worker, tmp_path, nprocs=4)
    merged = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(4)]
    assert all(m == LogprobStats(tokens=30.0, entropy=2.0, kl=1.0, max_abs=0.2) for m in merged)
