"""Token log-probs and entropies from a vocabulary split over tensor-parallel ranks, in token chunks.

Megatron's output layer is column-parallel: TP rank r holds rows [r V/tp, (r+1) V/tp) of the output
embedding, so no rank ever has a full row of logits. The softmax normalizer is assembled with two
all-reduces per chunk (the max, then the sum of exponentials), the target's logit with a third
(only its owner contributes), as in megatron's ``vocab_parallel_cross_entropy`` (Shoeybi et al. 2019,
Megatron-LM). Unlike that function, the logits of only ``chunk_tokens`` tokens exist at once: the
forward keeps the log-normalizer per token, the backward recomputes each chunk's logits (or, with
``keep_logits``, where memory allows, the forward keeps all the logits and the backward reuses them). Padded
vocabulary rows (ids >= ``vocab_size``) are left out of the GEMMs, so the result equals the unpadded
model's and they get no gradient. Entropies, when asked for (the RL log-prob pass, and the RL training
forward: no gradient through them), come from the same chunks' logits with a fourth all-reduce, of
each rank's part of -sum_j p_j log p_j.

Gradient: d logp_t / d z_tj = [j == y_t] - p_tj, divided by the temperature. The hidden-state
gradient returned is this rank's partial sum over its vocabulary slice; the caller's
``copy_to_tensor_model_parallel_region`` (or the sequence-parallel gather) all-reduces it, exactly as
for megatron's own output layer. Pure torch + torch.distributed: CPU CI tests it with gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_ext.backends.logprobs import compiled_chunk_fn


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


# The chunk kernels: pure elementwise + row reductions over one chunk's logits z_CV (the GEMM's output
# dtype, upcast inside), so that under torch.compile each is one pass over the chunk. Logits exist only
# for this rank's real vocabulary rows; padding rows never enter the softmax and get no gradient.

def _row_max(z_CV: torch.Tensor, temperature: float) -> torch.Tensor:
    """[C] float32 max of z / temperature (-inf for a rank whose rows are all padding)."""
    if z_CV.shape[1] == 0:
        return torch.full(z_CV.shape[:1], float("-inf"), dtype=torch.float32, device=z_CV.device)
    return z_CV.amax(dim=1).float() / temperature


def _row_sum_exp(z_CV: torch.Tensor, m_C: torch.Tensor, temperature: float) -> torch.Tensor:
    """[C] float32 sum_j exp(z_j / temperature - m)."""
    return torch.exp(z_CV.float() / temperature - m_C[:, None]).sum(dim=1)


def _target_logit(z_CV: torch.Tensor, local_C: torch.Tensor, temperature: float) -> torch.Tensor:
    """[C] float32 z_target / temperature where this rank owns the target id, else 0."""
    mine = (local_C >= 0) & (local_C < z_CV.shape[1])
    picked = z_CV.gather(1, local_C.clamp(0, max(z_CV.shape[1] - 1, 0))[:, None]).squeeze(1)
    return torch.where(mine, picked.float() / temperature, 0.0)


def _row_entropy_part(z_CV: torch.Tensor, lse_C: torch.Tensor, temperature: float) -> torch.Tensor:
    """[C] float32 -sum_j p_j log p_j over this rank's ids."""
    logp_CV = z_CV.float() / temperature - lse_C[:, None]
    return -(logp_CV.exp() * logp_CV).sum(dim=1)


def _logit_grad(z_CV: torch.Tensor, lse_C: torch.Tensor, g_C: torch.Tensor, local_C: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """d(sum_t g_t logp_t) / dz_CV = g_t ([j == y_t] - p_tj) / temperature, in z's dtype. The target
    is found by comparison (no index lists), so nothing waits on the host."""
    p_CV = torch.exp(z_CV.float() / temperature - lse_C[:, None])
    ids_V = torch.arange(z_CV.shape[1], device=z_CV.device)
    onehot_CV = (ids_V[None, :] == local_C[:, None]).float()
    return ((onehot_CV - p_CV) * (g_C / temperature)[:, None]).to(z_CV.dtype)


def _kernels(compiled: bool) -> dict:
    fns = {"row_max": _row_max, "row_sum_exp": _row_sum_exp, "target_logit": _target_logit,
           "row_entropy_part": _row_entropy_part, "logit_grad": _logit_grad}
    return {name: compiled_chunk_fn(fn) for name, fn in fns.items()} if compiled else fns


def _chunk_logp(z_CV, local_C, temperature, group, k) -> tuple[torch.Tensor, torch.Tensor]:
    """[C] float32 log p(target) and log sum_j exp(z_j / temperature), over the whole (TP-split)
    vocabulary; ``local_C``: the targets' ids relative to this rank's first row."""
    m = _all_reduce(k["row_max"](z_CV, temperature), dist.ReduceOp.MAX, group)
    lse = m + torch.log(_all_reduce(k["row_sum_exp"](z_CV, m, temperature), dist.ReduceOp.SUM, group))
    target = _all_reduce(k["target_logit"](z_CV, local_C, temperature), dist.ReduceOp.SUM, group)
    return target - lse, lse


def _chunk_entropy(z_CV, lse_C, temperature, group, k) -> torch.Tensor:
    """[C] float32 entropy (nats) over the whole (TP-split) vocabulary (in the Function's forward: no
    gradient)."""
    return _all_reduce(k["row_entropy_part"](z_CV, lse_C, temperature), dist.ReduceOp.SUM, group)


class _VocabParallelLogprob(torch.autograd.Function):
    """(hidden, weight, ...) -> (logp_T, entropy_T): logp differentiable; entropy non-differentiable,
    [T] when ``with_entropy``, else empty."""

    @staticmethod
    def forward(ctx, hidden_TH, weight_VH, targets_T, lo, n_valid, temperature, chunk, group, compiled, keep_logits,
                with_entropy):
        k = _kernels(compiled)
        w = weight_VH[:n_valid]
        lse = torch.empty(hidden_TH.shape[0], dtype=torch.float32, device=hidden_TH.device)
        logp = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if with_entropy else lse.new_empty(0)
        logits_TV = hidden_TH @ w.t() if keep_logits else None  # one GEMM, kept for the backward
        for s in range(0, hidden_TH.shape[0], chunk):
            z = logits_TV[s:s + chunk] if keep_logits else hidden_TH[s:s + chunk] @ w.t()
            logp[s:s + chunk], lse[s:s + chunk] = _chunk_logp(z, targets_T[s:s + chunk] - lo, temperature, group, k)
            if with_entropy:
                entropy[s:s + chunk] = _chunk_entropy(z, lse[s:s + chunk], temperature, group, k)
        ctx.save_for_backward(hidden_TH, weight_VH, targets_T, lse, logits_TV)
        ctx.args = (lo, n_valid, temperature, chunk, compiled)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_T, _grad_entropy):
        hidden_TH, weight_VH, targets_T, lse, logits_TV = ctx.saved_tensors
        if logits_TV is None:
            grad_h, grad_w = _recomputing_backward(hidden_TH, weight_VH, targets_T, lse, grad_T.float(), *ctx.args)
        else:
            grad_h, grad_w = _backward_from_logits(logits_TV, hidden_TH, weight_VH, targets_T, lse, grad_T.float(),
                                                   *ctx.args)
        return grad_h, grad_w, *[None] * 9


def _recomputing_backward(hidden_TH, weight_VH, targets_T, lse, grad_T, lo, n_valid, temperature, chunk, compiled):
    """(grad_hidden, grad_weight): each chunk's logits recomputed, their gradient taken to the hidden
    states and summed into the weight's gradient in fp32, chunk by chunk."""
    k, w = _kernels(compiled), weight_VH[:n_valid]
    grad_h = torch.empty_like(hidden_TH)
    grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
    for s in range(0, hidden_TH.shape[0], chunk):
        h = hidden_TH[s:s + chunk]
        dz = k["logit_grad"](h @ w.t(), lse[s:s + chunk], grad_T[s:s + chunk], targets_T[s:s + chunk] - lo,
                             temperature)
        grad_h[s:s + chunk] = dz @ w
        grad_w[:n_valid] += dz.t() @ h  # a GEMM in h's dtype (fp32 accumulation inside), summed in fp32
    return grad_h, grad_w.to(weight_VH.dtype)


def _backward_from_logits(logits_TV, hidden_TH, weight_VH, targets_T, lse, grad_T, lo, n_valid, temperature, chunk,
                          compiled):
    """(grad_hidden, grad_weight) from the logits the forward kept: each chunk's logits are overwritten
    by their gradient (nothing else holds them), then one GEMM over all T tokens gives each gradient,
    the weight's accumulated in fp32 inside it and rounded once."""
    k = _kernels(compiled)
    for s in range(0, hidden_TH.shape[0], chunk):
        logits_TV[s:s + chunk] = k["logit_grad"](logits_TV[s:s + chunk], lse[s:s + chunk], grad_T[s:s + chunk],
                                                 targets_T[s:s + chunk] - lo, temperature)
    grad_h = logits_TV @ weight_VH[:n_valid]
    grad_w = torch.nn.functional.pad(logits_TV.t() @ hidden_TH, (0, 0, 0, weight_VH.shape[0] - n_valid))
    return grad_h, grad_w


def vocab_parallel_logprobs(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    *,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    group: dist.ProcessGroup | None = None,
    with_entropy: bool = False,
    compiled: bool = False,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) under softmax(hidden @ W.T / temperature) with W's rows split over ``group``.

    hidden_TH: [T, H] final hidden states, the same on every rank of ``group``.
    weight_VH: [V_local, H] this rank's rows of the output embedding, global ids
        ``vocab_start .. vocab_start + V_local``; ids >= ``vocab_size`` (default: no padding) are padding.
    targets_T: [T] int64 global token ids.
    Returns ``logp_T`` [T] float32 (differentiable) and, with ``with_entropy``, ``entropy_T`` [T]
    float32 in nats (without gradient, from the same chunks' logits); else None.
    ``compiled``: run each chunk's softmax pieces under torch.compile (one fused pass each over the
    chunk's logits, forward and backward), as ``token_logprobs(compiled=True)`` does.
    ``keep_logits``: compute all T tokens' logits in one GEMM and keep them (T x V_local in the GEMM's
    dtype) for the backward, which then recomputes none: a quarter of the output layer's FLOPs saved
    for the memory of the logits (``model.keep_logits``). Only where a backward will follow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab_size = vocab_start + weight_VH.shape[0] if vocab_size is None else vocab_size
    n_valid = max(0, min(weight_VH.shape[0], vocab_size - vocab_start))  # rows past vocab_size: padding
    backward = torch.is_grad_enabled() and (hidden_TH.requires_grad or weight_VH.requires_grad)
    logp, entropy = _VocabParallelLogprob.apply(hidden_TH, weight_VH, targets_T, vocab_start, n_valid, temperature,
                                                chunk_tokens, group, compiled, keep_logits and backward, with_entropy)
    return logp, entropy if with_entropy else None
