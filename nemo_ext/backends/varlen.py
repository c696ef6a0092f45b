"""Causal attention over a packed batch (THD layout), for the torch backend (``attention.py``) and
megatron-core's local layer spec (``megatron/model.py``).

Sequences laid end to end attend only within themselves, given their boundaries ``cu_seqlens``. On
CUDA this is torch's flash-attention varlen kernel (``torch.nn.attention.varlen.varlen_attn``,
torch >= 2.10; ``window_size=(-1, 0)`` makes it causal). Grouped KV heads go to the kernel as they
are: flash attention shares each KV head among its query group natively, so KV is never repeated
(newer torch asks for ``enable_gqa=True`` to allow this; torch 2.11 has no such flag). Elsewhere (the
CPU, and fp32, which flash attention does not take) an exact fallback runs SDPA per sequence.

RoPE (Su et al. 2021) for packed rows is here too, computed from per-token positions that restart at
every sequence (``rope_cos_sin`` once per micro-batch, ``apply_rope`` per layer): megatron's own THD
RoPE path without TE splits the row per sequence and reads ``cu_seqlens`` on the host twice per layer.
Pure torch. Left out: dropout, sliding windows, RoPE scaling. Context parallelism builds on the
separate key boundaries (``megatron/context_parallel.py``).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10: only the exact fallback
    varlen_attn = None

# Resolved once here, not at call time, so torch.compile traces the call without inspecting.
_VARLEN_KWARGS = {"enable_gqa": True} if varlen_attn and "enable_gqa" in inspect.signature(varlen_attn).parameters \
    else {}


def rope_cos_sin(position_ids_T: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, 1, head_dim] in ``dtype``, computed in fp32 as Hugging Face's Qwen2 / Llama do."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids_T.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    freqs = position_ids_T.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x_THD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, the non-interleaved (GPT-NeoX / HF) layout."""
    x1, x2 = x_THD.chunk(2, dim=-1)
    return x_THD * cos + torch.cat([-x2, x1], dim=-1) * sin


def packed_causal_attention(q_THD: torch.Tensor, k_TGD: torch.Tensor, v_TGD: torch.Tensor,
                            cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None,
                            cu_seqlens_k: torch.Tensor | None = None, max_seqlen_k: int | None = None
                            ) -> torch.Tensor:
    """Causal attention within each packed sequence.

    q_THD: [T, H, D] queries; k_TGD, v_TGD: [Tk, G, D] keys and values with G KV heads (H % G == 0).
    cu_seqlens: [S+1] int32 boundaries, cu_seqlens[-1] == T. Returns [T, H, D] in q's dtype.
    cu_seqlens_k / max_seqlen_k: the keys' own boundaries when they differ from the queries' (context
    parallelism: query chunk i holds the last tokens of the prefix that key segment i holds). Causality
    is then aligned at the end: query j of an Lq-token segment sees keys 0 .. j + Lk - Lq.
    """
    if q_THD.shape[1] % k_TGD.shape[1]:
        raise ValueError(f"{q_THD.shape[1]} query heads are not a multiple of {k_TGD.shape[1]} KV heads")
    cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
    max_k = max_seqlen if max_seqlen_k is None else max_seqlen_k
    q_THD, k_TGD, v_TGD = _autocast_inputs(q_THD, k_TGD, v_TGD)
    if q_THD.is_cuda and q_THD.dtype in (torch.float16, torch.bfloat16):
        if varlen_attn is None:
            raise RuntimeError(f"packed attention on CUDA needs torch >= 2.10 (varlen_attn), not {torch.__version__}")
        # flash attention aligns the causal window at the end when Lq != Lk, as wanted above
        return varlen_attn(q_THD, k_TGD, v_TGD, cu_seqlens.to(torch.int32), cu_k.to(torch.int32), max_seqlen, max_k,
                           scale=scale, window_size=(-1, 0), **_VARLEN_KWARGS)
    return _reference(q_THD, k_TGD, v_TGD, cu_seqlens, cu_k, scale)


def te_packed_causal_attention(q_THD: torch.Tensor, k_TGD: torch.Tensor, v_TGD: torch.Tensor,
                               cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """``packed_causal_attention`` through Transformer Engine's fused attention (cuDNN's Hopper
    kernels; the shapes and dtypes as there, bf16 / fp16 on CUDA). Outside torch.compile's graphs:
    TE's modules do not trace."""
    return _te_call(*_autocast_inputs(q_THD, k_TGD, v_TGD), cu_seqlens.to(torch.int32), max_seqlen, scale)


def _autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in the autocast dtype when CUDA autocast is on, as SDPA does under autocast: HF's
    RoPE returns fp32 queries and keys when the residual is fp32."""
    if tensors[0].is_cuda and torch.is_autocast_enabled("cuda"):
        return tuple(x.to(torch.get_autocast_dtype("cuda")) for x in tensors)
    return tensors


@torch.compiler.disable
def _te_call(q, k, v, cu, max_seqlen, scale):
    attention = _te_attention(q.shape[1], k.shape[1], q.shape[2], scale)
    out = attention(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens_q=cu, cu_seqlens_kv=cu,
                    max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)
    return out.view(q.shape)


@functools.cache
def _te_attention(heads: int, kv_heads: int, head_dim: int, scale: float | None):
    from nemo_ext.backends.te_import import import_transformer_engine

    te = import_transformer_engine()
    return te.DotProductAttention(heads, head_dim, num_gqa_groups=kv_heads, attention_dropout=0.0, qkv_format="thd",
                                  attn_mask_type="padding_causal", softmax_scale=scale)


def _reference(q_THD, k_TGD, v_TGD, cu_q, cu_k, scale):
    """SDPA one sequence at a time: exact, for CPU and as the test oracle."""
    out = torch.empty_like(q_THD)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for a, b, ka, kb in zip(bounds_q[:-1], bounds_q[1:], bounds_k[:-1], bounds_k[1:], strict=True):
        q = q_THD[a:b].transpose(0, 1)[None]  # [1, heads, Lq, D]
        k, v = (x[ka:kb].transpose(0, 1)[None] for x in (k_TGD, v_TGD))
        lq, lk = b - a, kb - ka
        # SDPA's is_causal aligns at the start; at the end (lk - lq) is what packed chunks need
        mask = None if lq == lk else \
            torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[1])
        out[a:b] = o[0].transpose(0, 1)
    return out
