"""Test validation of code problems whose source ships solutions (CodeContests; project rows with
``solutions``): a problem is kept only if one of its correct Python 3 solutions passes its tests and,
in mode ``full``, one of its incorrect Python 3 solutions fails them.

The programs are judged by the RL reward itself, in the project's sandbox
(``RewardPool.score("code", ...)``: the same comparison, per-test time limit and isolation), so a kept
problem has tests the reward can pass and that tell a known-wrong program from a right one. A problem
whose only passing solutions need a tolerant checker (several valid outputs, floating-point
tolerance) or more time than the reward's limit fails here, as any policy sample would in RL.

The checks run in this order; the first one a problem fails names its drop:

- ``no_python_solution``: no correct Python 3 solution shipped (Python 2 and other languages are not run);
- ``no_incorrect_solution`` (mode ``full``): no incorrect Python 3 solution shipped;
- ``correct_failed``: none of the first ``tries`` correct solutions passes every test;
- ``incorrect_passed`` (mode ``full``): each of the first ``tries`` incorrect solutions passes every test.

Solutions are tried one per problem per round, so a problem costs one run per side when its first
solutions decide it. Mode ``correct`` skips the incorrect side; ``off`` skips validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nemo_ext.data.prompts import THINK_CLOSE
from nemo_ext.prep.code_sources import CodeProblem
from nemo_ext.rewards.common import Verdict

VALIDATION_MODES = ("full", "correct", "off")
DROP_REASONS = ("no_python_solution", "no_incorrect_solution", "correct_failed", "incorrect_passed")


@dataclass
class Outcome:
    """One problem's validation: the drop reason (None: kept), every verdict seen ("correct[0]:
    wrong_answer on test 2"), and the sandbox isolation the runs used ("bwrap" or "rlimits")."""

    reason: str | None
    verdicts: list[str] = field(default_factory=list)
    isolation: str | None = None


def as_response(program: str) -> str:
    """A solution written as a model response the code reward reads: one python block after ``</think>``."""
    return f"{THINK_CLOSE}\n```python\n{program.rstrip()}\n```\n"


def describe(side: str, attempt: int, verdict: Verdict) -> str:
    failed = verdict.meta.get("failed_test")
    return f"{side}[{attempt}]: {verdict.verdict}" + (f" on test {failed}" if failed is not None else "")


def first_match(pool, problems: Sequence[CodeProblem], programs: Sequence[tuple[str, ...]], want_pass: bool,
                tries: int, side: str, outcomes: list[Outcome]) -> list[bool]:
    """For problem i: whether one of its first ``tries`` ``programs[i]`` passes its tests (``want_pass``)
    or fails them (not ``want_pass``). One program per problem per round; verdicts go to ``outcomes[i]``."""
    found = [False] * len(problems)
    for attempt in range(tries):
        todo = [i for i in range(len(problems)) if not found[i] and attempt < len(programs[i])]
        if not todo:
            break
        verdicts = pool.score("code", [as_response(programs[i][attempt]) for i in todo],
                              [problems[i].prompt["tests"] for i in todo])
        for i, verdict in zip(todo, verdicts, strict=True):
            outcomes[i].verdicts.append(describe(side, attempt, verdict))
            outcomes[i].isolation = outcomes[i].isolation or verdict.meta.get("isolation")
            found[i] = (verdict.verdict == "accepted") == want_pass
    return found


def validate(problems: Sequence[CodeProblem], pool, mode: str, tries: int) -> list[Outcome]:
    """The outcome of each problem (see the module doc). ``pool``: a ``nemo_ext.rewards.RewardPool``;
    problems whose source ships no solutions (``validated`` False) are kept unchecked."""
    if mode not in VALIDATION_MODES:
        raise ValueError(f"validation mode must be one of {VALIDATION_MODES}, got {mode!r}")
    if tries < 1:
        raise ValueError(f"validation tries must be >= 1, got {tries}")
    outcomes = [Outcome(None) for _ in problems]
    checked = [] if mode == "off" else [i for i, p in enumerate(problems) if p.validated]
    for i in checked:
        if not problems[i].solutions:
            outcomes[i].reason = "no_python_solution"
        elif mode == "full" and not problems[i].incorrect:
            outcomes[i].reason = "no_incorrect_solution"
    sides = [("correct", True, "correct_failed")]
    if mode == "full":
        sides.append(("incorrect", False, "incorrect_passed"))
    for side, want_pass, reason in sides:
        todo = [i for i in checked if outcomes[i].reason is None]
        sub = [problems[i] for i in todo]
        programs = [p.solutions if want_pass else p.incorrect for p in sub]
        found = first_match(pool, sub, programs, want_pass, tries, side, [outcomes[i] for i in todo])
        for i, ok in zip(todo, found, strict=True):
            if not ok:
                outcomes[i].reason = reason
    return outcomes
