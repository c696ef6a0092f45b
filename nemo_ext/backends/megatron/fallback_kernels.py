"""Fast stand-ins for what megatron-core runs when neither Transformer Engine nor apex imports.

megatron-core's fallbacks for apex's multi-tensor kernels loop over the parameters in Python, and
its gradient-norm fallback reads every per-parameter norm back to the host (one device sync each,
``megatron.core.utils.local_multi_tensor_l2_norm``), which leaves the GPU idle between the backward
and the optimizer step. Its optimizer falls back to torch's AdamW on the multi-tensor (foreach) path.
Here: torch's fused AdamW kernel, and ``torch._foreach_*`` versions of the norm and scale kernels
with apex's calling convention, so the gradient norm stays on the device (megatron then clips with
a tensor coefficient, as it does under TE). Pure torch; ``install_foreach_kernels`` imports
megatron-core when called. Figures in docs/performance.md.
"""

from __future__ import annotations

import torch


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """apex's ``multi_tensor_l2norm`` contract: the L2 norm of all tensors of ``tensor_lists[0]``
    together as a float32 [1] tensor, and the per-tensor norms ([n]) when ``per_tensor``; no sync."""
    tensors = tensor_lists[0]
    if not tensors:
        zero = torch.zeros(1, dtype=torch.float32, device=noop_flag.device)
        return zero, (zero[:0] if per_tensor else None)
    norms = torch.stack(torch._foreach_norm(tensors)).float()
    return torch.linalg.vector_norm(norms).reshape(1), (norms if per_tensor else None)


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """apex's ``multi_tensor_scale`` contract: ``dst = src * scale`` for the pairs of ``tensor_lists``
    ([src, dst]; in place when they are the same tensors). ``scale``: a float or a one-element tensor
    (``multi_tensor_scale_tensor``)."""
    src, dst = tensor_lists
    if not src:
        return
    if torch.is_tensor(scale):
        scale = scale.reshape(())
    if all(a is b for a, b in zip(src, dst, strict=True)):
        torch._foreach_mul_(dst, scale)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def install_foreach_kernels() -> bool:
    """Put ``foreach_l2_norm`` / ``foreach_scale`` in place of megatron-core's local fallbacks (only
    where those are in use: TE's or apex's kernels stay). Returns whether anything was replaced."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    replaced = False
    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
        clip_grads.multi_tensor_scale_impl = foreach_scale
        clip_grads.multi_tensor_scale_tensor_impl = foreach_scale
        replaced = True
    if optimizer.multi_tensor_scale_impl is utils.local_multi_tensor_scale:
        optimizer.multi_tensor_scale_impl = foreach_scale
        replaced = True
    return replaced


def use_fused_torch_adam(optimizer) -> None:
    """Switch megatron's fallback optimizer (torch's AdamW, when neither Transformer Engine nor apex
    imports) from its default multi-tensor kernels to torch's fused AdamW kernel: on the 1.5B shape
    the step took 46 ms against 13 ms fused (one H100, docs/performance.md). TE's or apex's FusedAdam,
    when megatron found one, is left alone. The ``step`` counters move to the parameters' device, as
    the fused kernel wants them (a loaded checkpoint brings them as CPU tensors)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        if type(inner) not in (torch.optim.Adam, torch.optim.AdamW):
            continue
        for group in inner.param_groups:
            group.update(fused=True, foreach=False)
            for p in group["params"]:
                state = inner.state.get(p, {})
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
