"""Benchmark metrics against values worked out by hand (nemo_ext/evaluation/metrics.py)."""

import math
from math import comb

import numpy as np
import pytest

from nemo_ext.evaluation import metrics


def test_avg_at_k_mean_sd_se_by_hand():
    # 2 problems x 3 samples. Runs (columns): [1, 1] -> 1.0, [0, 1] -> 0.5, [1, 0] -> 0.5.
    result = metrics.avg_at_k([[1, 0, 1], [1, 1, 0]])
    assert result.k == 3
    assert result.mean == pytest.approx(2 / 3)
    # deviations 1/3, -1/6, -1/6: sum of squares 1/9 + 2/36 = 1/6; / (k - 1) = 1/12
    assert result.sd == pytest.approx(math.sqrt(1 / 12))
    assert result.se == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))


def test_avg_at_k_single_run_has_no_spread_and_bad_shapes_fail():
    result = metrics.avg_at_k([[1], [0], [0], [1]])
    assert result.mean == 0.5 and math.isnan(result.sd) and math.isnan(result.se)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.avg_at_k([])


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 2, 1 - comb(3, 2) / comb(5, 2)),  # 1 - 3/10 = 0.7
    (5, 2, 1, 0.4),                          # pass@1 = c / n
    (4, 0, 2, 0.0),
    (4, 3, 2, 1.0),                          # n - c = 1 < k: every pair holds a correct sample
    (10, 3, 5, 1 - comb(7, 5) / comb(10, 5)),
    (64, 1, 64, 1.0),
])
def test_pass_at_k_matches_the_closed_form(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_closed_form_on_a_grid():
    for n in range(1, 17):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1.0 - comb(n - c, k) / comb(n, k)
                assert metrics.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-9), (n, c, k)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 1, 5)


def test_pass_at_k_table_uses_powers_of_two_and_n():
    table = metrics.pass_at_k_table([2, 0], n=6)
    assert list(table) == [1, 2, 4, 6]
    assert table[1] == pytest.approx((2 / 6 + 0) / 2)
    assert table[2] == pytest.approx((1 - comb(4, 2) / comb(6, 2)) / 2)  # (1 - 6/15) / 2 = 0.3
    assert table[6] == pytest.approx(0.5)


def test_majority_vote_groups_normalized_answers_and_skips_missing():
    answers = ["\\dfrac{1}{2}", "\\frac{1}{2}", " \\frac{1}{2}.", "3", None, None, None]
    rewards = [1, 1, 1, 0, 0, 0, 0]
    assert metrics.majority_vote(answers, rewards) == ("\\dfrac{1}{2}", 1.0)


def test_majority_vote_tie_scores_the_mean_of_tied_groups():
    # 24 and 25 tie with two votes each; only 25 is right: expected score of a random tie-break = 1/2
    answer, score = metrics.majority_vote(["24", "25", "25", "24", "7"], [0, 1, 1, 0, 0])
    assert score == 0.5 and answer == "24"  # the first tied group reached is named
    # order does not matter
    assert metrics.majority_vote(["25", "24", "24", "25", "7"], [1, 0, 0, 1, 0])[1] == 0.5


def test_majority_vote_without_answers_scores_zero():
    assert metrics.majority_vote([None, None], [0, 0]) == (None, 0.0)


def test_normalize_answer():
    assert metrics.normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert metrics.normalize_answer("\\text{Evelyn}") == "Evelyn"
    assert metrics.normalize_answer("$42$.") == "42"


def test_summarize_by_hand():
    rewards = [[1, 1], [0, 1], [0, 0]]
    lengths = [[100, 200], [300, 400], [512, 50]]
    truncated = [[False, False], [False, False], [True, False]]
    answers = [["204", "204"], ["24", "25"], [None, "7"]]
    out = metrics.summarize(rewards, lengths, truncated, answers)
    assert out["num_problems"] == 3 and out["samples"] == 2
    # runs: [1, 0, 0] -> 1/3 and [1, 1, 0] -> 2/3
    assert out["avg"]["mean"] == pytest.approx(0.5)
    assert out["avg"]["sd"] == pytest.approx(math.sqrt(1 / 18))
    assert out["avg"]["se"] == pytest.approx(1 / 6)
    assert out["pass_at_k"] == pytest.approx({"1": 0.5, "2": 2 / 3})
    assert out["majority"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["mean_response_tokens"] == pytest.approx(1562 / 6)
    assert out["truncation_rate"] == pytest.approx(1 / 6)
    assert "majority" not in metrics.summarize(rewards, lengths, truncated)


def test_standard_error_shrinks_like_one_over_sqrt_k():
    # Independent runs with the same per-run spread: se at 64 runs is half of se at 16.
    rng = np.random.default_rng(0)
    correct = (rng.random((30, 64)) < 0.6).astype(float)
    se16 = metrics.avg_at_k(correct[:, :16]).se
    se64 = metrics.avg_at_k(correct).se
    assert se64 < se16
    assert se64 == pytest.approx(metrics.avg_at_k(correct).sd / 8)
