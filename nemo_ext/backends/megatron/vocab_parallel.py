"""Token log-probs and entropies from a vocabulary split over tensor-parallel ranks, in token chunks.

Megatron's output layer is column-parallel: TP rank r holds rows [r V/tp, (r+1) V/tp) of the output
embedding, so no rank ever has a full row of logits. The softmax normalizer is assembled with two
all-reduces per chunk (the max, then the sum of exponentials), the target's logit with a third
(only its owner contributes), as in megatron's ``vocab_parallel_cross_entropy`` (Shoeybi et al. 2019,
Megatron-LM). Unlike that function, the logits of only ``chunk_tokens`` tokens exist at once: the
forward keeps the log-normalizer per token, the backward recomputes each chunk's logits. Padded
vocabulary rows (ids >= ``vocab_size``) are masked out, so the result equals the unpadded model's.

Gradient: d logp_t / d z_tj = [j == y_t] - p_tj, divided by the temperature. The hidden-state
gradient returned is this rank's partial sum over its vocabulary slice; the caller's
``copy_to_tensor_model_parallel_region`` (or the sequence-parallel gather) all-reduces it, exactly as
for megatron's own output layer. Pure torch + torch.distributed: CPU CI tests it with gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _chunk_logits(h_CH, w_VH, lo: int, vocab_size: int, temperature: float) -> torch.Tensor:
    """[C, V_local] float32 logits / temperature, padded columns at -inf."""
    z = (h_CH @ w_VH.t()).float()
    if temperature != 1.0:
        z.div_(temperature)
    n_valid = max(0, min(w_VH.shape[0], vocab_size - lo))
    if n_valid < w_VH.shape[0]:
        z[:, n_valid:] = float("-inf")
    return z


def _target_logit(z_CV, t_C, lo: int, group) -> torch.Tensor:
    local = t_C - lo
    mine = (local >= 0) & (local < z_CV.shape[1])
    picked = z_CV.gather(1, local.clamp(0, z_CV.shape[1] - 1)[:, None]).squeeze(1)
    return _all_reduce(torch.where(mine, picked, torch.zeros_like(picked)), dist.ReduceOp.SUM, group)


def _log_normalizer(z_CV, group) -> torch.Tensor:
    m = _all_reduce(z_CV.max(dim=1).values, dist.ReduceOp.MAX, group)
    s = _all_reduce(torch.exp(z_CV - m[:, None]).sum(dim=1), dist.ReduceOp.SUM, group)
    return m + torch.log(s)


class _VocabParallelLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_TH, weight_VH, targets_T, lo, vocab_size, temperature, chunk, group):
        lse = torch.empty(hidden_TH.shape[0], dtype=torch.float32, device=hidden_TH.device)
        logp = torch.empty_like(lse)
        for s in range(0, hidden_TH.shape[0], chunk):
            z = _chunk_logits(hidden_TH[s:s + chunk], weight_VH, lo, vocab_size, temperature)
            lse[s:s + chunk] = _log_normalizer(z, group)
            logp[s:s + chunk] = _target_logit(z, targets_T[s:s + chunk], lo, group) - lse[s:s + chunk]
        ctx.save_for_backward(hidden_TH, weight_VH, targets_T, lse)
        ctx.args = (lo, vocab_size, temperature, chunk)
        return logp

    @staticmethod
    def backward(ctx, grad_T):
        hidden_TH, weight_VH, targets_T, lse = ctx.saved_tensors
        lo, vocab_size, temperature, chunk = ctx.args
        grad_h = torch.empty_like(hidden_TH)
        grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
        for s in range(0, hidden_TH.shape[0], chunk):
            h = hidden_TH[s:s + chunk]
            z = _chunk_logits(h, weight_VH, lo, vocab_size, temperature)
            g = grad_T[s:s + chunk].float() / temperature
            dz = z.sub_(lse[s:s + chunk, None]).exp_().mul_(-g[:, None])  # in place: chunks are large
            local = targets_T[s:s + chunk] - lo
            rows = torch.nonzero((local >= 0) & (local < z.shape[1])).squeeze(1)
            dz[rows, local[rows]] += g[rows]
            dz = dz.to(h.dtype)
            grad_h[s:s + chunk] = dz @ weight_VH
            grad_w += dz.t() @ h  # a bf16 GEMM (fp32 accumulation inside), summed over chunks in fp32
        return grad_h, grad_w.to(weight_VH.dtype), None, None, None, None, None, None


@torch.no_grad()
def _logprobs_and_entropy(hidden_TH, weight_VH, targets_T, lo, vocab_size, temperature, chunk, group):
    logp, entropy = [], []
    for s in range(0, hidden_TH.shape[0], chunk):
        z = _chunk_logits(hidden_TH[s:s + chunk], weight_VH, lo, vocab_size, temperature)
        lse = _log_normalizer(z, group)
        logp.append(_target_logit(z, targets_T[s:s + chunk], lo, group) - lse)
        logp_CV = (z - lse[:, None]).nan_to_num(neginf=0.0)  # padded ids: p = 0, log p = 0
        entropy.append(_all_reduce(-(logp_CV.exp() * logp_CV).sum(dim=1), dist.ReduceOp.SUM, group))
    return torch.cat(logp), torch.cat(entropy)


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) under softmax(hidden @ W.T / temperature) with W's rows split over ``group``.

    hidden_TH: [T, H] final hidden states, the same on every rank of ``group``.
    weight_VH: [V_local, H] this rank's rows of the output embedding, global ids
        ``vocab_start .. vocab_start + V_local``; ids >= ``vocab_size`` (default: no padding) are padding.
    targets_T: [T] int64 global token ids.
    Returns ``logp_T`` [T] float32 (differentiable) and, with ``with_entropy`` (no gradient),
    ``entropy_T`` [T] float32 in nats; else None.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab_size = vocab_start + weight_VH.shape[0] if vocab_size is None else vocab_size
    args = (hidden_TH, weight_VH, targets_T, vocab_start, vocab_size, temperature, chunk_tokens, group)
    if with_entropy:
        return _logprobs_and_entropy(*args)
    return _VocabParallelLogprob.apply(*args), None
