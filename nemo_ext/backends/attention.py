"""Packed (varlen) causal attention for Hugging Face models, registered as ``nemo_varlen``.

Sequences packed end to end in one row attend only within themselves. On CUDA the kernel is torch's
flash-attention varlen (``torch.nn.attention.varlen.varlen_attn``) on the batch's ``cu_seqlens``,
with grouped KV heads handled by the kernel; elsewhere an exact fallback runs SDPA with a
block-diagonal causal mask. The model receives the boundaries as the flash-attention keyword
arguments transformers already threads through every layer (``cu_seq_lens_q`` ...), so no model
code is patched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

VARLEN_ATTENTION = "nemo_varlen"


def block_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[T, T] bool, True where query i may attend key j: same sequence and j <= i."""
    seq_id = torch.repeat_interleave(torch.arange(cu_seqlens.numel() - 1, device=cu_seqlens.device),
                                     cu_seqlens.diff().long(), output_size=total)
    causal = torch.ones(total, total, dtype=torch.bool, device=cu_seqlens.device).tril()
    return causal & (seq_id[:, None] == seq_id[None, :])


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or query.shape[0] != 1:
        raise ValueError("nemo_varlen attention needs a packed batch of one row and cu_seq_lens_q")
    max_len = int(kwargs["max_length_q"])
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scaling,
                          window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
        return out.unsqueeze(0), None
    mask = block_causal_mask(cu_seqlens, q.shape[0])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2), None


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


def packed_attention_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """The keyword arguments a HF model forward takes for one packed row."""
    cu = cu_seqlens.to(torch.int32)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_seqlen, "max_length_k": max_seqlen}
