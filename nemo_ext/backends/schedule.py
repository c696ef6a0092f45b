"""The learning-rate schedule both backends follow: linear warmup, then a cosine decay to a floor.

SFT decays from ``optim.lr`` to ``optim.min_lr`` over the run; an RL stage holds its ``lr`` once its
warmup is over (``LRSchedule.constant``). Pure: the torch backend hands ``factor`` to torch's
``LambdaLR``, megatron sets ``lr_at(step)`` on its optimizer's parameter groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """lr: the peak, reached at the end of the warmup. total_steps: optimizer steps (warmup included)
    at which the cosine reaches ``min_lr``; None holds ``lr`` after the warmup."""

    lr: float
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr: float = 0.0

    @classmethod
    def constant(cls, lr: float, warmup_steps: int = 0) -> LRSchedule:
        return cls(lr=lr, warmup_steps=warmup_steps, total_steps=None, min_lr=lr)

    def factor(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based) as a fraction of ``lr``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        floor = self.min_lr / self.lr if self.lr > 0 else 0.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        return self.lr * self.factor(step)
