"""``trainer.compile`` for both backends: each decoder layer compiled in place, dynamic shapes.

Packed rows differ in length and in number of sequences; with ``dynamic=True`` one graph serves them
all (static shapes would recompile for every new bin length). The compiled graphs fuse the norms,
RoPE and SwiGLU, and keep fewer activations for the backward (docs/performance.md). The log-prob
chunk kernels are compiled on every GPU run, ``trainer.compile`` or not, unless
``trainer.compile_logprobs`` says otherwise (``compiled_logprobs``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nemo_ext.config.schema import TrainerConfig


def compile_layers(layers: Iterable[torch.nn.Module], activation_memory_budget: float) -> None:
    """Compile every module of ``layers`` in place.

    activation_memory_budget: ``trainer.activation_memory_budget``, the fraction of the activations
    the backward would keep that the compiled graphs may keep; below 1, torch's min-cut partitioner
    recomputes the cheapest ops (pointwise first) in the backward instead of storing their outputs.
    """
    torch._functorch.config.activation_memory_budget = activation_memory_budget
    for layer in layers:
        layer.compile(dynamic=True)


def compiled_logprobs(trainer_cfg: TrainerConfig, device: torch.device) -> bool:
    """Whether the log-prob chunk kernels run under torch.compile: ``trainer.compile_logprobs`` where
    set, else with ``trainer.compile`` (which compiles the decoder layers) and on every GPU run. They
    are a few elementwise passes over each chunk's logits with no graph breaks; eager, their backward
    took 85 ms of a 451 ms megatron step at the 1.5B shape (Transformer Engine spec), compiled 43 ms
    (docs/performance.md)."""
    if trainer_cfg.compile_logprobs is not None:
        return trainer_cfg.compile_logprobs
    return trainer_cfg.compile or device.type == "cuda"
