"""The SFT objective: mean negative log-likelihood over every trained (assistant) token of the
global batch. Normalizing by the global token count, not per micro-batch, makes k accumulated
micro-batches equal one big batch exactly (NeMo-RL's convention)."""

from __future__ import annotations

import torch

from nemo_ext.backends.base import LossFn
from nemo_ext.data.batch import PackedBatch


def sft_loss(num_global_loss_tokens: float) -> LossFn:
    """``LossFn`` for a step whose micro-batches, on all ranks, hold ``num_global_loss_tokens``
    trained tokens in total."""
    if num_global_loss_tokens <= 0:
        raise ValueError("the global batch has no trained tokens (every loss_mask is 0)")

    def loss_fn(logp_T: torch.Tensor, batch: PackedBatch):
        nll = -(logp_T * batch.loss_mask).sum()
        return nll / num_global_loss_tokens, {"loss_tokens": batch.loss_mask.sum()}

    return loss_fn
