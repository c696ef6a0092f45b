"""Difficulty balancing: response length as the difficulty proxy, thinning short, resampling long.

AceReason-Nemotron 1.1 (/work/shared/PAPER.md, "difficulty balancing"): "response length is the
difficulty proxy; prompts whose responses are about 2K tokens or shorter are randomly thinned, other
levels resampled". The paper publishes neither its level edges nor its rates, so the defaults here
are ours: levels split at 2,048 / 8,192 / 16,384 response tokens (the first edge is the paper's
"about 2K"; 8K and 16K are ours: 16K is half the 32K SFT length, 8K between), factors 0.5 / 1 / 1 / 1 (halve the
short level, keep the rest: resampling duplicates samples, and the paper's scaling row finds more
unique prompts worth more than more responses per prompt).

A level's *factor* f sets how many times each of its units appears in the output: every unit
``floor(f)`` times, and a seeded random ``round(frac(f) * count)`` of them once more. So f = 0.3
keeps exactly 30% of the level (thinning, within one unit of rounding), f = 1.5 keeps all and
duplicates half (resampling with replacement, stratified: no unit is lost). A unit is a sample, or a
prompt with all its responses (its length then the mean of its responses' lengths), as the paper's
"prompts whose responses" suggests.

Left out: generating more responses for long prompts (needs the teacher model); with
``max_responses_per_prompt`` unset, curation keeps every response the input has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_EDGES = (2048, 8192, 16384)  # response tokens; a length equal to an edge is in the lower level
DEFAULT_FACTORS = (0.5, 1.0, 1.0, 1.0)  # one per level: <= 2048, <= 8192, <= 16384, longer
CHARS_PER_TOKEN = 4.0  # the approximation without a tokenizer (usual rate for English BPE text)
HISTOGRAM_BINS = 40  # equal-width bins of the before/after plot, from 0 to 2 x the last edge


def approx_tokens(texts: Sequence[str]) -> np.ndarray:
    """[N] int64 approximate token counts: ceil(characters / CHARS_PER_TOKEN)."""
    return np.fromiter((math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts), np.int64, count=len(texts))


def tokenizer_lengths(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """[N] int64 token counts of ``texts`` under a Hugging Face tokenizer (no special tokens added)."""
    if not texts:
        return np.zeros(0, np.int64)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.fromiter(map(len, ids), np.int64, count=len(ids))


def check_levels(edges: Sequence[int], factors: Sequence[float]) -> None:
    """Raise ``ValueError`` unless edges increase strictly and there is one factor >= 0 per level."""
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or any(e < 1 for e in edges):
        raise ValueError(f"length edges must be positive and strictly increasing, got {list(edges)}")
    if len(factors) != len(edges) + 1:
        raise ValueError(f"{len(edges)} length edges make {len(edges) + 1} levels, but {len(factors)} "
                         f"factors were given ({list(factors)})")
    if any(f < 0 for f in factors):
        raise ValueError(f"factors must be >= 0, got {list(factors)}")


def level_of(lengths: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """[N] int64 level of each length: 0 for length <= edges[0], ..., len(edges) above the last."""
    return np.searchsorted(np.asarray(edges), lengths, side="left")


def unit_lengths(lengths: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(unit lengths [U] float64, unit of each sample [N] int64).

    groups: [N] any hashable-equal keys (e.g. prompt hashes), or None for one unit per sample. A
    group's length is the mean of its samples' lengths; units are numbered by first appearance.
    """
    if groups is None:
        return lengths.astype(np.float64), np.arange(len(lengths))
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    unit = rank[inverse.reshape(-1)]
    sums = np.bincount(unit, weights=lengths, minlength=len(first))
    return sums / np.bincount(unit, minlength=len(first)), unit


def multiplicities(levels: np.ndarray, factors: Sequence[float], seed: int) -> np.ndarray:
    """[U] int64 copies of each unit in the output (0 = thinned), given its level [U] and the factors.

    Deterministic in ``seed``: levels are visited in order, each drawing from one generator.
    """
    rng = np.random.default_rng(seed)
    copies = np.zeros(len(levels), np.int64)
    for level, factor in enumerate(factors):
        members = np.flatnonzero(levels == level)
        whole = math.floor(factor)
        extra = math.floor((factor - whole) * len(members) + 0.5)
        copies[members] = whole
        copies[rng.choice(members, size=extra, replace=False)] += 1
    return copies


def balance(
    lengths: np.ndarray, edges: Sequence[int], factors: Sequence[float], seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, list[dict]]:
    """Copies of each sample [N] int64 and a report per level.

    lengths: [N] response lengths in tokens. groups: [N] prompt keys to balance whole prompts, or
    None to balance samples. Report entries: ``level`` ("<= 2048", ..., "> 16384"), ``factor``,
    ``units_before`` / ``units_after``, ``samples_before`` / ``samples_after``.
    """
    check_levels(edges, factors)
    ulengths, unit = unit_lengths(lengths, groups)
    ulevels = level_of(ulengths, edges)
    ucopies = multiplicities(ulevels, factors, seed)
    copies = ucopies[unit]
    names = [f"<= {e}" for e in edges] + [f"> {edges[-1]}" if edges else "all"]
    slevels = ulevels[unit]
    report = [
        {
            "level": names[k],
            "factor": float(f),
            "units_before": int((ulevels == k).sum()),
            "units_after": int(ucopies[ulevels == k].sum()),
            "samples_before": int((slevels == k).sum()),
            "samples_after": int(copies[slevels == k].sum()),
        }
        for k, f in enumerate(factors)
    ]
    return copies, report


def histogram(lengths: np.ndarray, copies: np.ndarray | None, top: int) -> tuple[list[int], list[int], int]:
    """(edges [B+1], counts [B], count above ``top``) of ``lengths`` weighted by ``copies``."""
    edges = np.linspace(0, top, HISTOGRAM_BINS + 1).round().astype(np.int64)
    weights = None if copies is None else copies
    counts, _ = np.histogram(np.minimum(lengths, top), bins=edges, weights=weights)
    above = lengths > top
    over = int(above.sum() if copies is None else copies[above].sum())
    counts[-1] -= over  # np.minimum put them in the last bin
    return edges.tolist(), counts.astype(np.int64).tolist(), over
