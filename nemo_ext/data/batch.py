"""Packed micro-batches: several sequences laid end to end in one row, kept apart by ``cu_seqlens``.

This is the one tensor layout both training backends consume, for SFT and RL alike. A bin from the
packed Parquet shards (``input_ids``, ``loss_mask``, ``seq_start_id``; see docs/data.md) or a list of
RL rollouts becomes a ``PackedBatch`` through ``pack_sequences``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch


@dataclass
class PackedBatch:
    """One micro-batch of S sequences packed into T tokens.

    input_ids:    [T] int64, the tokens.
    position_ids: [T] int64, restarting at 0 at every sequence start.
    cu_seqlens:   [S+1] int32, sequence boundaries (0, l1, l1+l2, ..., T).
    targets:      [T] int64, the next token of the same sequence (0 where there is none).
    loss_mask:    [T] float32, 1.0 where ``targets`` is a trained token, else 0.0 (always 0 at a
                  sequence's last token).
    token_fields: per-token float32 tensors [T] aligned with ``targets`` (advantages, old log-probs,
                  per-token loss weights, ...), carried through to the loss function.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    token_fields: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_sequences(self) -> int:
        return int(self.cu_seqlens.numel() - 1)

    @property
    def max_seqlen(self) -> int:
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())

    @property
    def seq_lengths(self) -> list[int]:
        """The S sequence lengths, in order."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device | str) -> PackedBatch:
        move = lambda t: t.to(device, non_blocking=True)
        return replace(
            self,
            input_ids=move(self.input_ids),
            position_ids=move(self.position_ids),
            cu_seqlens=move(self.cu_seqlens),
            targets=move(self.targets),
            loss_mask=move(self.loss_mask),
            token_fields={k: move(v) for k, v in self.token_fields.items()},
        )


def cu_seqlens_of(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """[S+1] int32 boundaries (0, l1, l1+l2, ...) of sequences of ``lengths`` laid end to end."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(torch.tensor(lengths, device=device), 0)
    return cu


def pack_sequences(
    token_ids: Sequence[Sequence[int] | torch.Tensor],
    trained: Sequence[Sequence[int | bool] | torch.Tensor],
    token_fields: dict[str, Sequence[Sequence[float] | torch.Tensor]] | None = None,
) -> PackedBatch:
    """Lay sequences end to end into one ``PackedBatch``. Each sequence's values come as a list or a
    1-D tensor (tensors are concatenated without a Python loop over their elements).

    token_ids[i]: the tokens of sequence i (length L_i >= 1).
    trained[i]:   [L_i], 1 where token j of sequence i is one the model learns to predict (an
                  assistant / response token), 0 for prompt tokens. Shifted here onto targets: the
                  loss at position j predicts token j+1.
    token_fields: name -> per-sequence [L_i] values aligned with the tokens (value j belongs to token
                  j), shifted like ``trained``.
    """
    if len(token_ids) == 0:
        raise ValueError("pack_sequences needs at least one sequence")
    lengths = [len(ids) for ids in token_ids]
    if min(lengths) < 1:
        raise ValueError("pack_sequences got an empty sequence")
    input_ids = _laid_end_to_end(token_ids, torch.long)
    trained_flat = _laid_end_to_end(trained, torch.float32)
    if trained_flat.numel() != input_ids.numel():
        raise ValueError("trained masks must have one entry per token")
    cu_seqlens = cu_seqlens_of(lengths)
    starts = cu_seqlens[:-1].long()
    position_ids = torch.arange(input_ids.numel()) - torch.repeat_interleave(starts, torch.tensor(lengths))

    is_last = torch.zeros(input_ids.numel(), dtype=torch.bool)
    is_last[cu_seqlens[1:].long() - 1] = True
    targets = torch.roll(input_ids, -1).masked_fill(is_last, 0)
    loss_mask = torch.roll(trained_flat, -1).masked_fill(is_last, 0.0)
    fields = {}
    for name, values in (token_fields or {}).items():
        flat = _laid_end_to_end(values, torch.float32)
        if flat.numel() != input_ids.numel():
            raise ValueError(f"token field {name!r} must have one value per token")
        fields[name] = torch.roll(flat, -1).masked_fill(is_last, 0.0)
    return PackedBatch(input_ids, position_ids, cu_seqlens, targets, loss_mask, fields)


def _laid_end_to_end(seqs: Sequence[Sequence[float] | torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """[sum L_i] ``dtype``: the sequences one after another (CPU)."""
    return torch.cat([torch.as_tensor(s, dtype=dtype, device="cpu").reshape(-1) for s in seqs])


def from_packed_row(input_ids: Sequence[int], loss_mask: Sequence[int], seq_start_id: Sequence[int]) -> PackedBatch:
    """A bin of the packed Parquet shards (columns of docs/data.md) as a ``PackedBatch``."""
    bounds = list(seq_start_id) + [len(input_ids)]
    ids = [input_ids[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    masks = [loss_mask[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return pack_sequences(ids, masks)
