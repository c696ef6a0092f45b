"""Token log-probabilities and entropies computed in chunks of tokens.

The full logits of one long sequence do not fit: 32K tokens x 152K vocabulary is 19 GB in fp32. Here
the output projection, log-softmax and gather run over ``chunk_tokens`` tokens at a time; under
autograd each chunk is checkpointed, so the backward pass recomputes one chunk's logits at a time
instead of keeping them all. Peak extra memory is about ``chunk_tokens x V`` floats, twice.

Temperature: the policy that samples at temperature tau is softmax(logits / tau); the log-probs used
by the RL importance ratio and the entropy the temperature controller watches are both of that
scaled distribution (see ../shared/FACTS.md, vLLM's processed log-probs).
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(hidden_CH: torch.Tensor, weight_VH: torch.Tensor, targets_C: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    logits_CV = (hidden_CH @ weight_VH.t()).float() / temperature
    return logits_CV.gather(1, targets_C[:, None]).squeeze(1) - torch.logsumexp(logits_CV, dim=-1)


def _chunk_logprobs_and_entropy(hidden_CH: torch.Tensor, weight_VH: torch.Tensor, targets_C: torch.Tensor,
                                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[C] log p(target) (differentiable) and [C] entropy in nats (detached: no gradient, nothing saved
    for the backward; computed last, so a checkpoint's recompute stops before it)."""
    logits_CV = (hidden_CH @ weight_VH.t()).float() / temperature
    lse_C = torch.logsumexp(logits_CV, dim=-1)
    logp_C = logits_CV.gather(1, targets_C[:, None]).squeeze(1) - lse_C
    logp_CV = logits_CV.detach() - lse_C.detach()[:, None]
    return logp_C, -(logp_CV.exp() * logp_CV).sum(-1)


@functools.cache
def compiled_chunk_fn(chunk_fn):
    """``chunk_fn`` under torch.compile with dynamic shapes: the last chunk of a row is shorter and
    rows differ in length, so one graph serves them all."""
    return torch.compile(chunk_fn, dynamic=True)


def token_logprobs(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    with_entropy: bool = False,
    compiled: bool = False,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets) under softmax(hidden @ weight.T / temperature), chunk by chunk.

    hidden_TH: [T, H] final hidden states (after the last norm); weight_VH: [V, H] output embedding.
    Returns ``logp_T`` [T] float32 (differentiable) and, with ``with_entropy``, ``entropy_T`` [T]
    float32 in nats (without gradient, from the same chunks' logits), else None.
    ``compiled``: run each chunk's log-softmax (and entropy) under torch.compile, which fuses the
    upcast, the temperature and the reductions into one pass over the chunk's logits (forward and
    backward).
    ``keep_logits``: no checkpoint around the chunks, so autograd keeps what each chunk's backward
    needs (its logits) instead of recomputing them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    checkpointed = not keep_logits and torch.is_grad_enabled() and (hidden_TH.requires_grad or weight_VH.requires_grad)
    chunk_fn = _chunk_logprobs_and_entropy if with_entropy else _chunk_logprobs
    chunk_fn = compiled_chunk_fn(chunk_fn) if compiled else chunk_fn
    pieces = []
    for s in range(0, hidden_TH.shape[0], chunk_tokens):
        args = (hidden_TH[s:s + chunk_tokens], weight_VH, targets_T[s:s + chunk_tokens], temperature)
        pieces.append(checkpoint(chunk_fn, *args, use_reentrant=False) if checkpointed else chunk_fn(*args))
    if with_entropy:
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
    return torch.cat(pieces), None
