"""Packed (varlen) causal attention for Hugging Face models, registered as ``nemo_varlen``.

Sequences packed end to end in one row attend only within themselves. The kernel is
``varlen.packed_causal_attention``: torch's flash-attention varlen on CUDA, exact per-sequence SDPA
elsewhere. The model receives the boundaries as the flash-attention keyword arguments transformers
already threads through every layer (``cu_seq_lens_q`` ...), so no model code is patched.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from nemo_ext.backends.te_import import te_available
from nemo_ext.backends.varlen import packed_causal_attention, te_packed_causal_attention

VARLEN_ATTENTION = "nemo_varlen"
TE_ATTENTION = "nemo_te"
# model.attn_implementation -> the registered name: torch's flash-attention varlen kernel (FA2 class;
# the exact per-sequence SDPA on CPU), or Transformer Engine's fused cuDNN attention (CUDA in bf16 or
# fp16, TE needed); auto is resolved by attention_name
ATTENTION = {"auto": None, "varlen": VARLEN_ATTENTION, "te": TE_ATTENTION}
# the dtypes TE's fused attention takes
TE_DTYPES = (torch.bfloat16, torch.float16)


def _packed_forward(kernel):
    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        """query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is None or query.shape[0] != 1:
            raise ValueError("packed attention needs a packed batch of one row and cu_seq_lens_q")
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
        out = kernel(q, k, v, cu_seqlens, int(kwargs["max_length_q"]), scale=scaling)
        return out.unsqueeze(0), None

    return forward


for _name, _kernel in ((VARLEN_ATTENTION, packed_causal_attention), (TE_ATTENTION, te_packed_causal_attention)):
    AttentionInterface.register(_name, _packed_forward(_kernel))
    AttentionMaskInterface.register(_name, flash_attention_mask)


def attention_name(attn_implementation: str, *, device_type: str, dtype: torch.dtype,
                   compute_capability: tuple[int, int] | None = None) -> str:
    """The registered attention of ``model.attn_implementation`` for a model computing in ``dtype`` on
    ``device_type`` (a CUDA device of ``compute_capability``). ``auto`` takes TE's cuDNN attention
    where it was measured faster and can run (CUDA of compute capability 9.0 or later, bf16 or fp16,
    Transformer Engine importable), else the varlen kernel: on one H200 at the 1.5B shape
    (docs/performance.md, "Packed attention for the torch backend") cuDNN trained 1.04-1.07x faster
    in SFT and the GRPO update 1.08x faster. An unknown value, or ``te`` where it cannot run, is
    refused naming the key (at model load, not at the first forward after vLLM has started)."""
    if attn_implementation not in ATTENTION:
        raise ValueError(f"model.attn_implementation={attn_implementation!r}; expected one of {sorted(ATTENTION)}")
    te_runs_here = device_type == "cuda" and dtype in TE_DTYPES
    if attn_implementation == "auto":
        measured_faster = compute_capability is not None and compute_capability >= (9, 0)
        return TE_ATTENTION if te_runs_here and measured_faster and te_available() else VARLEN_ATTENTION
    if ATTENTION[attn_implementation] == TE_ATTENTION:
        if not te_runs_here:
            raise ValueError(f"model.attn_implementation=te runs on CUDA in bf16 or fp16; this model computes in "
                             f"{dtype} on {device_type} (trainer.accelerator, trainer.precision); set "
                             "model.attn_implementation=varlen or auto")
        if not te_available():
            raise ValueError("model.attn_implementation=te needs Transformer Engine (`import transformer_engine."
                             "pytorch` fails here; NVIDIA's PyTorch containers have it); set "
                             "model.attn_implementation=varlen to use torch's flash-attention kernel instead")
    return ATTENTION[attn_implementation]


def packed_attention_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """The keyword arguments a HF model forward takes for one packed row."""
    cu = cu_seqlens.to(torch.int32)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_seqlen, "max_length_k": max_seqlen}
