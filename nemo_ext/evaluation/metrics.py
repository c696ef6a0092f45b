"""Benchmark metrics: avg@k with its spread, unbiased pass@k, majority vote, length and truncation.

- avg@k (AceReason-Nemotron 1.1, arXiv 2506.13284, evaluation protocol): k samples per problem; run i
  is sample i of every problem; avg@k is the mean of the k run accuracies. Its spread is the standard
  deviation of the run accuracies (ddof=1) and the standard error of their mean, sd / sqrt(k) (the
  paper quotes the latter: AIME24 1.8 / 1.2 / 0.7 at 16 / 32 / 64 samples). Reports show the
  standard error.
- pass@k: the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1), from n >= k samples
  of which c are correct: 1 - C(n-c, k) / C(n, k), computed as a stable product.
- majority@k (math): answers are grouped by ``normalize_answer`` (exact string equality after light
  LaTeX normalization; equal values written differently, "0.5" vs "\\frac{1}{2}", are *not* merged),
  samples without an answer do not vote, the largest group wins. A tie between g groups scores the mean
  correctness of the tied groups: the expected score of breaking the tie uniformly at random, so the
  result does not depend on sample order. A group's correctness is the mean reward of its members.

All functions are pure (no I/O) and take plain lists or arrays. Accuracies are fractions in [0, 1].
Left out: pass@k confidence intervals, bootstrap error bars, majority vote for code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AvgAtK:
    """avg@k over P problems: ``mean`` of the k run accuracies, their ``sd`` (ddof=1) and ``se``."""

    k: int
    mean: float
    sd: float
    se: float

    def as_dict(self) -> dict:
        return asdict(self)


def avg_at_k(correct_PK: np.ndarray | Sequence[Sequence[float]]) -> AvgAtK:
    """avg@k from ``correct_PK[p, i]`` = reward (0..1) of sample i of problem p; shape [P, K].

    sd and se are NaN for k = 1 (one run has no spread).
    """
    correct = np.asarray(correct_PK, dtype=np.float64)
    if correct.ndim != 2 or correct.shape[0] == 0 or correct.shape[1] == 0:
        raise ValueError(f"correct_PK must be a non-empty [problems, samples] array, got {correct.shape}")
    run_acc_K = correct.mean(axis=0)
    k = run_acc_K.shape[0]
    sd = float(run_acc_K.std(ddof=1)) if k > 1 else math.nan
    return AvgAtK(k=k, mean=float(run_acc_K.mean()), sd=sd, se=sd / math.sqrt(k) if k > 1 else math.nan)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: n samples, c correct, 1 <= k <= n (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(num_correct_P: Sequence[int], n: int) -> dict[int, float]:
    """Mean pass@k over problems for k = 1, 2, 4, ... up to n, and n itself."""
    ks = sorted({2**e for e in range(n.bit_length()) if 2**e <= n} | {n})
    return {k: float(np.mean([pass_at_k(n, c, k) for c in num_correct_P])) for k in ks}


_NORMALIZE_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\s")


def normalize_answer(answer: str) -> str:
    """Light LaTeX normalization for grouping answers: drop spacing, ``\\left``/``\\right`` and ``$``,
    unify ``\\dfrac``/``\\tfrac`` with ``\\frac``, strip a trailing period and a ``\\text{}`` wrapper."""
    text = _NORMALIZE_DROP.sub("", answer)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    match = re.fullmatch(r"\\text\{(.*)\}", text)
    return match.group(1) if match else text


def majority_vote(answers: Sequence[str | None], rewards: Sequence[float]) -> tuple[str | None, float]:
    """``(winning answer, score)`` of one problem's samples; see the module docstring for ties.

    answers[i]: the extracted final answer of sample i (None: no answer, does not vote).
    rewards[i]: its reward (0..1). Score 0 when no sample has an answer.
    """
    if len(answers) != len(rewards):
        raise ValueError(f"{len(answers)} answers but {len(rewards)} rewards")
    groups: dict[str, list[float]] = {}
    first: dict[str, str] = {}
    for answer, reward in zip(answers, rewards, strict=True):
        if answer is None:
            continue
        key = normalize_answer(answer)
        groups.setdefault(key, []).append(float(reward))
        first.setdefault(key, answer)
    if not groups:
        return None, 0.0
    top = max(len(members) for members in groups.values())
    tied = [key for key, members in groups.items() if len(members) == top]
    score = float(np.mean([np.mean(groups[key]) for key in tied]))
    return first[tied[0]], score


def mean_and_rate(lengths: Sequence[int], truncated: Sequence[bool]) -> tuple[float, float]:
    """Mean response length (tokens) and truncation rate (fraction of samples cut at the token limit)."""
    if not lengths or len(lengths) != len(truncated):
        raise ValueError(f"need equally many lengths and flags, got {len(lengths)} and {len(truncated)}")
    return float(np.mean(lengths)), float(np.mean(np.asarray(truncated, dtype=np.float64)))


def summarize(
    rewards_PK: Sequence[Sequence[float]],
    lengths_PK: Sequence[Sequence[int]],
    truncated_PK: Sequence[Sequence[bool]],
    answers_PK: Sequence[Sequence[str | None]] | None = None,
) -> dict:
    """All metrics of one benchmark from per-sample results, each list shaped [problems][samples].

    Returns ``avg`` (AvgAtK as a dict), ``pass_at_k`` ({k: value}), ``majority`` (mean score, math
    only, else absent), ``mean_response_tokens``, ``truncation_rate``, ``num_problems``, ``samples``.
    """
    rewards = np.asarray(rewards_PK, dtype=np.float64)
    avg = avg_at_k(rewards)
    num_correct = [int(round(c)) for c in (rewards >= 1.0).sum(axis=1)]
    flat_lengths = [n for row in lengths_PK for n in row]
    flat_truncated = [t for row in truncated_PK for t in row]
    mean_len, trunc_rate = mean_and_rate(flat_lengths, flat_truncated)
    out = {
        "num_problems": int(rewards.shape[0]),
        "samples": avg.k,
        "avg": avg.as_dict(),
        "pass_at_k": {str(k): v for k, v in pass_at_k_table(num_correct, avg.k).items()},
        "mean_response_tokens": mean_len,
        "truncation_rate": trunc_rate,
    }
    if answers_PK is not None:
        scores = [majority_vote(a, r)[1] for a, r in zip(answers_PK, rewards_PK, strict=True)]
        out["majority"] = float(np.mean(scores))
    return out
