"""Math reward: the paper's extraction (last box after </think>) and equivalence on cases that break
naive graders. Expected verdicts are decided by hand from the documented normalization rules."""

import threading

import pytest

from nemo_ext.rewards import math as math_reward
from nemo_ext.rewards.math import extract_answer, last_boxed, normalize, score_math


def respond(boxed: str, think: str = "Let me try \\boxed{999} first.") -> str:
    """An R1-style response whose final answer is ``\\boxed{boxed}``, with a decoy box in the think block."""
    return f"<think>\n{think}\n</think>\n\nThe final answer is $\\boxed{{{boxed}}}$."


@pytest.mark.parametrize("response, expected", [
    (respond("3"), "3"),
    ("<think>\\boxed{1}</think> first \\boxed{2}, then \\boxed{3}", "3"),  # several boxes: the last
    ("</think> \\boxed{\\frac{1}{2}} and \\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are text
    ("</think> \\boxed{7} and a truncated \\boxed{\\frac{1", "7"),  # unbalanced last box: the last balanced
    ("</think> \\boxed{\\boxed{5}}", "5"),  # nested box unwrapped
    ("</think> \\boxed { 12 }", "12"),
    ("<think>so it is \\boxed{3}</think> The answer is 3.", None),  # box only inside <think>
    ("<think>reasoning \\boxed{3} never closed", None),  # no </think>: nothing counts
    ("<think>x</think> The answer is 42.", None),  # no box, no credit (math-verify would extract 42)
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_last_boxed_matrix_with_line_breaks():
    matrix = "\\begin{pmatrix}1\\\\2\\end{pmatrix}"
    assert last_boxed(f"\\boxed{{{matrix}}}") == matrix


@pytest.mark.parametrize("raw, expected", [
    ("3\\%", "3"), ("15 percent", "15"), ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("45°", "45"),
    ("1,000", "1000"), ("1{,}000", "1000"), ("12\\,345.5", "12345.5"), ("(3,100)", "(3,100)"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("gold, boxed, reward", [
    ("0.5", "\\frac12", 1.0),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", 1.0),
    ("\\frac{3}{4}", "0.75", 1.0),
    ("3", "x = 3", 1.0),
    ("3", "3\\%", 1.0),  # percent signs are dropped on both sides ...
    ("3\\%", "3", 1.0),
    ("0.03", "3\\%", 0.0),  # ... so 3% is not 0.03
    ("5", "\\text{5}", 1.0),
    ("\\text{(B)}", "B", 1.0),
    ("\\text{Monday}", "Monday", 1.0),
    ("5", "5\\text{ cm}", 1.0),  # units
    ("10", "10 \\text{ meters}", 1.0),
    ("30^\\circ", "30", 1.0),
    ("[1,2)", "[1, 2)", 1.0),  # intervals: same ...
    ("[1,2)", "(1,2]", 0.0),  # ... and with the other ends open
    ("\\{1,2,3\\}", "\\{3,2,1\\}", 1.0),  # sets are unordered
    ("(1,2)", "(2,1)", 0.0),  # tuples are not
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 1.0),
    ("x^2+2x+1", "(x+1)^2", 1.0),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2", 1.0),
    ("33", "033", 1.0),  # AIME answers compare as integers
    ("1000", "1,000", 1.0),
    ("(3,100)", "3100", 0.0),  # a pair is not a number with a thousands separator
    ("7", "8", 0.0),
    ("\\frac{\\pi}{2}", "1.5708", 0.0),  # math-verify rounds to 6 decimals: 4 are not enough
])
def test_equivalence(gold, boxed, reward):
    verdict = score_math(respond(boxed), gold)
    assert verdict.reward == reward, verdict
    assert verdict.verdict == ("accepted" if reward else "wrong_answer")
    assert verdict.extracted == boxed


def test_integer_reference_and_verdict_fields():
    v = score_math(respond("204"), 204)  # AIME answers may be stored as ints
    assert (v.reward, v.verdict, v.extracted, v.meta) == (1.0, "accepted", "204", {})
    assert v.seconds >= 0


def test_no_answer_reasons():
    assert score_math("<think>\\boxed{3}", "3").meta == {"reason": "no </think>"}
    no_box = score_math("<think>\\boxed{3}</think> It is 3.", "3")
    assert no_box.meta == {"reason": "no \\boxed{} after </think>"}
    assert score_math("<think>\\boxed{3}", "3").verdict == "no_answer"


def test_pathological_expression_hits_the_time_limit():
    math_reward.equivalent.cache_clear()
    v = score_math(respond("9^{9^{9^{9}}}"), "1", timeout_s=0.5)
    assert (v.reward, v.verdict, v.extracted) == (0.0, "time_limit", "9^{9^{9^{9}}}")
    assert v.seconds < 5  # the alarm interrupted sympy instead of letting it run for hours
    assert score_math(respond("\\frac{2}{4}"), "0.5").verdict == "accepted"  # and the next one is fine


def test_verdicts_are_deterministic():
    cases = [("0.5", "\\frac12"), ("\\{1,2\\}", "\\{2,1\\}"), ("x^2", "x\\cdot x"), ("(1,2)", "(2,1)"),
             ("7", "8")]
    first = [score_math(respond(b), g) for g, b in cases]
    math_reward.equivalent.cache_clear()
    math_reward._parse.cache_clear()
    second = [score_math(respond(b), g) for g, b in cases]
    fields = lambda verdicts: [(v.reward, v.verdict, v.extracted) for v in verdicts]  # noqa: E731
    assert fields(first) == fields(second)
    assert [v.reward for v in first] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_math_verify_errors_are_counted_not_swallowed(monkeypatch, caplog):
    # No input we found makes math-verify raise, so the failure is injected at its entry point.
    def broken_verify(*args, **kwargs):
        raise TypeError("cannot compare")

    monkeypatch.setattr(math_reward, "verify", broken_verify)
    math_reward.equivalent.cache_clear()
    v = score_math(respond("\\frac{1}{3}"), "\\frac{2}{6}")
    assert (v.reward, v.verdict) == (0.0, "error")
    assert v.meta["errors"] and all(e == "TypeError: cannot compare" for e in v.meta["errors"])
    assert "math-verify error" in caplog.text
    math_reward.equivalent.cache_clear()


def test_score_math_refuses_threads():
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_capture(lambda: score_math(respond("1"), "1"))))
    thread.start()
    thread.join()
    assert isinstance(errors[0], RuntimeError) and "RewardPool" in str(errors[0])


def _capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None
