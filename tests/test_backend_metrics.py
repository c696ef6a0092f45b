"""How a train step reduces its loss function's metrics: summed over micro-batches and data-parallel
ranks, except names ending in ``/max``, which take the maximum (``backends.base``); the torch backend
on two gloo ranks, with and without the entropies handed to the loss."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from nemo_ext.backends.base import reduce_metric
from nemo_ext.data.batch import pack_sequences
from nemo_ext.models.tiny import build_tiny_checkpoint
from tests.helpers import run_gloo_ranks


def test_micro_batches_sum_metrics_and_take_the_maximum_of_max_ones():
    values = [torch.tensor(1.0), torch.tensor(4.0), torch.tensor(2.5)]
    for name, expected in (("tokens", 7.5), ("gap/max", 4.0), ("max_gap", 7.5)):
        total = None
        for v in values:
            total = reduce_metric(name, total, v)
        assert float(total) == expected, name


def _peak_loss(logp_T, batch, entropy_T=None):
    """A loss whose metrics are known per micro-batch: its trained tokens (summed) and its first
    input id (maximized), plus the entropies' sum when given."""
    metrics = {"tokens": batch.loss_mask.sum(), "first_id/max": batch.input_ids[0].float()}
    if entropy_T is not None:
        metrics["entropy"] = (entropy_T * batch.loss_mask).sum()
    return -(logp_T * batch.loss_mask).sum() / 100, metrics


def _rank_micro_batches(rank: int) -> list:
    """Rank 0's first ids 7, 30; rank 1's 50, 9: the maximum, 50, is on rank 1's first micro-batch."""
    firsts = [(7, 30), (50, 9)][rank]
    return [pack_sequences([[f, 11, 12, 13 + rank]], [[0, 1, 1, 1]]) for f in firsts]


def _train_rank(rank: int, out_dir: str, with_entropy: bool) -> None:
    from nemo_ext.backends.schedule import LRSchedule
    from nemo_ext.backends.torch_backend import TorchBackend
    from nemo_ext.config.schema import ModelConfig, OptimConfig, TrainerConfig

    backend = TorchBackend(str(Path(out_dir) / "tiny"), ModelConfig(), TrainerConfig(), OptimConfig(),
                           LRSchedule.constant(1e-3), torch.device("cpu"))
    assert backend.dp_world_size == 2
    out = backend.train_step(_rank_micro_batches(rank), _peak_loss, 1.0, with_entropy=with_entropy)
    torch.save(out, Path(out_dir) / f"rank{rank}_{with_entropy}.pt")


def test_two_ranks_sum_metrics_and_take_the_maximum_of_max_ones(tmp_path):
    build_tiny_checkpoint(tmp_path / "tiny", seed=0)
    for with_entropy in (False, True):
        run_gloo_ranks(functools.partial(_train_rank, with_entropy=with_entropy), tmp_path)
        outs = [torch.load(tmp_path / f"rank{r}_{with_entropy}.pt") for r in (0, 1)]
        assert outs[0] == outs[1]  # every rank gets the reduced values
        out = outs[0]
        assert out["tokens"] == 12.0 and out["first_id/max"] == 50.0  # 4 micro-batches of 3 trained tokens
        assert ("entropy" in out) == with_entropy
        if with_entropy:  # 12 tokens of a random 512-id model: near log(512) = 6.24 nats each
            assert 12 * 5.5 < out["entropy"] < 12 * 6.24
