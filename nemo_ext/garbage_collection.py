"""Python's cyclic garbage collector run between training steps, not whenever its thresholds trip.

A full collection walks every tracked object: after torch, megatron, Transformer Engine, vLLM and a
compiled model are loaded that is a million objects or more, a pause of a few tenths of a second to
seconds (0.27 s for the 455K objects of torch + transformers + vLLM on the 2-core CPU machine) that
lands inside whichever step allocated the object that tripped the threshold. Megatron-LM
(``--manual-gc``, ``--manual-gc-interval``) and NeMo (``GarbageCollectionCallback``, every 100 steps)
collect on a schedule instead; so does this. What exists when the loop starts is frozen
(``gc.freeze``: never walked again), and everything newer is collected every ``interval`` steps.
Objects in reference cycles live until then; tensors freed by reference counting, the common case, go
at once as before.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepCollector:
    """``after_step(step)`` collects every ``interval`` steps; 0 leaves Python's collector alone."""

    def __init__(self, interval: int):
        self.interval = interval

    def after_step(self, step: int) -> None:
        """``step``: steps done so far (1 after the first)."""
        if self.interval and step % self.interval == 0:
            gc.collect()


@contextmanager
def collect_between_steps(interval: int) -> Iterator[StepCollector]:
    """Inside: the automatic collector off and the objects alive at entry frozen; ``interval`` 0 =
    Python's collector as usual. On exit the collector is as it was, and what was frozen is thawed."""
    if interval < 0:
        raise ValueError(f"gc_interval must be >= 0 (0 = Python's own collector), got {interval}")
    if not interval:
        yield StepCollector(0)
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield StepCollector(interval)
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


class PauseRecorder:
    """The collections Python runs while installed (``gc.callbacks``): ``pauses`` holds
    ``(generation, seconds)`` per collection; ``seconds(min_generation)`` sums them."""

    def __init__(self):
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))

    def seconds(self, min_generation: int = 0) -> float:
        return sum(t for g, t in self.pauses if g >= min_generation)


@contextmanager
def record_pauses() -> Iterator[PauseRecorder]:
    """Inside: every garbage collection's generation and duration recorded (benchmarks)."""
    recorder = PauseRecorder()
    gc.callbacks.append(recorder)
    try:
        yield recorder
    finally:
        gc.callbacks.remove(recorder)
