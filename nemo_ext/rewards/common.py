"""What every reward returns, and the one rule math and code share: only text after ``</think>`` counts.

AceReason-Nemotron (arXiv 2505.16400, 2506.13284) scores the final answer, never the reasoning: the math
reward reads the last ``\\boxed{}`` after ``</think>`` and the code reward the last python block after it.
A response without ``</think>`` (a truncated one, usually) has no final answer and earns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_ext.data.prompts import THINK_CLOSE


@dataclass(frozen=True)
class Verdict:
    """The score of one response.

    reward: 1.0 or 0.0 (the paper's rewards are binary, without format or length terms).
    verdict: one word; math: accepted, wrong_answer, no_answer, time_limit, error; code: accepted,
        wrong_answer, time_limit, memory_limit, output_limit, runtime_error, syntax_error, no_code, error.
    extracted: the final answer that was judged (boxed content or program text); None if none was found.
    seconds: wall-clock seconds spent scoring this response.
    meta: details (failing test, error message, isolation used, ...); JSON-serializable.
    """

    reward: float
    verdict: str
    extracted: str | None
    seconds: float
    meta: dict = field(default_factory=dict)


def after_think(response: str) -> str | None:
    """The final-answer part of a response: the text after the last ``</think>``, or None if absent."""
    idx = response.rfind(THINK_CLOSE)
    return None if idx < 0 else response[idx + len(THINK_CLOSE):]
