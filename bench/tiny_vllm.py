"""What the vLLM benches share (run them with ``PYTHONPATH=.``): an engine of the tiny model (or of a
bench shape on random weights, for the GPU) and the synthetic task's prompts, built here and never
downloaded, and variants timed against each other."""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from bench.shapes import shape_config
from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.synthetic import make_problems
from nemo_ext.generation import build_engine
from nemo_ext.models.catalog import random_checkpoint
from nemo_ext.models.tiny import build_tiny_checkpoint

T = TypeVar("T")


def engine_and_prompts(prompts: int, max_model_len: int, shape: str = "tiny", **engine_kwargs):
    """A vLLM engine and ``prompts`` rendered math prompts. ``shape``: ``tiny``, a freshly built tiny
    checkpoint, or a ``bench.shapes`` name (``1.5b``, ``7b``) on random weights with the tiny
    tokenizer; ``engine_kwargs`` go to ``generation.build_engine``."""
    directory = Path(tempfile.mkdtemp())
    if shape == "tiny":
        model = build_tiny_checkpoint(directory / "tiny")
    else:
        model = random_checkpoint(shape_config(shape), directory / shape)
        gc.collect()
        torch.cuda.empty_cache()  # the weights were made on the GPU: leave vLLM the whole card
    llm = build_engine(str(model), seed=0, max_model_len=max_model_len, **engine_kwargs)
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
