"""The math reward of AceReason-Nemotron (arXiv 2505.16400 sec. 3, reused in 2506.13284): 1 if the last
``\\boxed{...}`` after ``</think>`` is equivalent to the reference answer, else 0.

Equivalence is decided by HuggingFace's ``math-verify`` (LaTeX, fractions, decimals, intervals, sets,
tuples, matrices, symbolic expressions), after a few normalizations of our own that make verdicts match
how benchmark answers are written:

- percent: ``\\%``, ``%``, "percent" are dropped on both sides, so ``3\\%`` == ``3`` and ``3\\%`` != ``0.03``
  (a question asking for a percentage is answered in percent; math-verify alone would read 3% as 0.03);
- degrees: ``^\\circ``, ``^{\\circ}``, ``\\circ``, ``\\degree``, ``°`` are dropped (``30^\\circ`` == ``30``);
- ``\\text{...}`` wrappers and trailing units (``5\\text{ cm}``, ``10 meters``, ``\\$5``) are removed by
  math-verify's own LaTeX normalization (its ``units=True`` list), which we keep;
- integers (AIME answers 0-999, written ``033`` or ``33``) are compared as integers without sympy.

Only the last balanced box counts (several boxes: the last wins); a box inside ``<think>`` gives no
credit; no ``</think>``, no credit. Plain-text answers ("The answer is 42.") are ignored on purpose, unlike
math-verify's default extraction.

Time limits: ``score_math`` arms a SIGALRM interval timer (main thread only) and turns math-verify's own
SIGALRM timeouts off, because its ``alarm(0)`` would cancel ours. A C-level hang that never returns to
the interpreter cannot be interrupted in-process; ``RewardPool`` is the hard limit (it kills the worker).
math-verify swallows errors by default; here they are raised, logged, counted in ``Verdict.meta`` and
turned into the verdict ``error``. Verdicts are deterministic except ``time_limit``, which depends on load.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator

from math_verify import LatexExtractionConfig, parse, verify

from nemo_ext.rewards.common import Verdict, after_think

logger = logging.getLogger(__name__)


class MathTimeout(BaseException):
    """Raised by the per-sample alarm. A BaseException, so library ``except Exception`` cannot eat it."""


class _DropTimeoutDisabledWarning(logging.Filter):
    # We disable math-verify's timeouts on purpose (see the module docstring); its one-time warning
    # about that would only mislead.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())

_BOXED = re.compile(r"\\boxed\s*\{")
_PERCENT = re.compile(r"\\text\s*\{\s*(?:percent|percentage|\\?%)\s*\}|\\?%|\bpercent(?:age)?\b")
_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°|\\text\s*\{\s*degrees?\s*\}")
_SEPARATED_NUMBER = re.compile(r"[+-]?\d{1,3}(?:(?:\{,\}|\\,|,)\d{3})+(?:\.\d+)?")
_SEPARATOR = re.compile(r"\{,\}|\\,|,")
_SPACE = re.compile(r"\s+|\\[,;:! ]|~")
_INTEGER = re.compile(r"[+-]?\d+")
_LATEX_ONLY = [LatexExtractionConfig()]


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the group whose content starts at ``start``, or -1. ``\\{`` is text."""
    depth, i, n = 1, start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> str | None:
    """Content of the last balanced top-level ``\\boxed{...}`` in ``text`` (nested boxes unwrapped)."""
    found, pos = None, 0
    while (m := _BOXED.search(text, pos)) is not None:
        end = _closing_brace(text, m.end())
        if end < 0:  # unbalanced: everything after it is inside it
            break
        found, pos = text[m.end():end].strip(), end + 1
    while found and (inner := _BOXED.match(found)) and _closing_brace(found, inner.end()) == len(found) - 1:
        found = found[inner.end():-1].strip()
    return found


def extract_answer(response: str) -> str | None:
    """The paper's extraction: the last balanced ``\\boxed{}`` after ``</think>``; None if there is none."""
    final = after_think(response)
    return None if final is None else last_boxed(final)


def normalize(answer: str) -> str:
    """Our normalizations before math-verify: drop percent signs, degree marks and thousands separators."""
    answer = _PERCENT.sub("", answer)
    answer = _DEGREE.sub("", answer)
    answer = answer.strip()
    if _SEPARATED_NUMBER.fullmatch(answer):  # 1,000 or 1{,}000 or 1\,000; not the pair (3,100)
        answer = _SEPARATOR.sub("", answer)
    return answer


@functools.lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple:
    """math-verify's parse of one normalized answer: (sympy object, string) or (string,) if unparsable."""
    return tuple(parse("\\boxed{" + answer + "}", extraction_config=_LATEX_ONLY, parsing_timeout=None,
                       raise_on_error=True))


@functools.lru_cache(maxsize=65536)
def equivalent(gold: str, pred: str) -> tuple[bool, tuple[str, ...]]:
    """Whether ``pred`` is equivalent to the reference ``gold`` (both raw boxed contents).

    Returns (equal, errors): the math-verify exceptions met on the way, as "Type: message" strings.
    Order matters: math-verify is not symmetric (equations and intervals are read from the gold's side).
    Cached: RL scores 8-16 rollouts per prompt, which often box the same answer.
    """
    gold, pred = normalize(gold), normalize(pred)
    if _SPACE.sub("", gold) == _SPACE.sub("", pred) and gold:
        return True, ()
    if _INTEGER.fullmatch(gold) and _INTEGER.fullmatch(pred):
        return int(gold) == int(pred), ()
    errors = []
    try:
        golds, preds = _parse(gold), _parse(pred)
    except Exception as e:  # noqa: BLE001 - counted and reported, never swallowed
        errors.append(f"{type(e).__name__}: {e}"[:300])
        golds, preds = (), ()
    for g in golds:
        for p in preds:
            try:
                if verify(g, p, timeout_seconds=None, raise_on_error=True):
                    return True, tuple(errors)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}"[:300])
    for err in errors:
        logger.warning("math-verify error on gold=%r pred=%r: %s", gold[:100], pred[:100], err)
    return False, tuple(errors)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise MathTimeout in this (main) thread once ``seconds`` of wall time have passed."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("score_math needs SIGALRM, so it must run in a main thread; "
                           "for concurrency use nemo_ext.rewards.RewardPool (processes)")
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        raise RuntimeError("score_math needs ITIMER_REAL, but an outer timer is already armed")

    def on_alarm(signum, frame):
        raise MathTimeout(f"math verification exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score_math(response: str, answer: str | int, timeout_s: float = 5.0) -> Verdict:
    """Score one response against one reference answer, in this process, within ``timeout_s`` seconds."""
    start = time.perf_counter()
    boxed = extract_answer(response)
    if boxed is None:
        reason = "no </think>" if after_think(response) is None else "no \\boxed{} after </think>"
        return Verdict(0.0, "no_answer", None, time.perf_counter() - start, {"reason": reason})
    return judge_boxed(boxed, answer, timeout_s, start)


def judge_boxed(boxed: str, answer: str | int, timeout_s: float = 5.0, start: float | None = None) -> Verdict:
    """The verdict on an already extracted answer (``RewardPool`` extracts in the parent, sends only this).

    start: ``time.perf_counter()`` when scoring began (default: now), for ``Verdict.seconds``.
    """
    start = time.perf_counter() if start is None else start
    try:
        with deadline(timeout_s):
            ok, errors = equivalent(str(answer), boxed)
    except MathTimeout:
        return Verdict(0.0, "time_limit", boxed, time.perf_counter() - start, {"timeout_s": timeout_s})
    verdict = "accepted" if ok else "error" if errors else "wrong_answer"
    meta = {"errors": list(errors)} if errors else {}
    return Verdict(float(ok), verdict, boxed, time.perf_counter() - start, meta)
