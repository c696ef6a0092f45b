"""The embedded default's task: multi-digit arithmetic, worked digit by digit inside ``<think>``.

Each step writes one digit and the digits written so far (``-> 927``), so the final answer is a copy
of the last partial result: a tiny model needs only local operations, never a long-range reversal.

Small enough that a ~1M-parameter model learns it on two CPU cores in minutes, hard enough (carries
chain across digits) that it does not reach 100% at once, so SFT and then RL show measurable gains.
Each problem is a dict with ``question``, ``answer`` (the integer as a string), and ``output`` (the
teacher response: reasoning in ``<think> ... </think>``, then the final answer in ``\\boxed{}``), the
shape of ``nvidia/AceReason-1.1-SFT`` rows. Train and test problems never share a question: a problem
belongs to a split by a hash of its question.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from nemo_ext.io import atomic_write_text

OPERATIONS = ("add", "sub", "mul")
TEST_FRACTION = 0.1  # share of the question space reserved for held-out problems


def _split_of(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if digest[0] < 256 * TEST_FRACTION else "train"


def _digits(n: int) -> list[int]:
    """Least significant digit first."""
    return [int(c) for c in reversed(str(n))]


def _add_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, carry, partial = [], 0, ""
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        partial = f"{s % 10}{partial}"
        steps.append(f"{x}+{y}+{carry}={s}, write {s % 10} carry {s // 10} -> {partial}")
        carry = s // 10
    if carry:
        steps.append(f"final carry {carry} -> {carry}{partial}")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, borrow, partial = [], 0, ""
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        d = x - y - borrow
        nxt = 1 if d < 0 else 0
        partial = f"{d + 10 * nxt}{partial}"
        steps.append(f"{x}-{y}-{borrow}={d}, write {d + 10 * nxt} borrow {nxt} -> {partial}")
        borrow = nxt
    return steps


def _mul_steps(a: int, b: int) -> list[str]:
    steps, carry, partial = [], 0, ""
    for x in _digits(a):
        p = x * b + carry
        partial = f"{p % 10}{partial}"
        steps.append(f"{x}*{b}+{carry}={p}, write {p % 10} carry {p // 10} -> {partial}")
        carry = p // 10
    if carry:
        steps.append(f"final carry {carry} -> {carry}{partial}")
    return steps


def _make_problem(rng: random.Random) -> dict:
    op = rng.choice(OPERATIONS)
    if op == "mul":
        a, b = rng.randint(10, 9_999), rng.randint(2, 9)
        question, answer = f"What is {a} * {b}?", a * b
        intro = f"Multiply {a} by {b} digit by digit from the right."
        steps, result = _mul_steps(a, b), "product"
    else:
        a, b = rng.randint(10, 9_999), rng.randint(10, 9_999)
        if op == "sub":
            a, b = max(a, b), min(a, b)
            question, answer = f"What is {a} - {b}?", a - b
            intro = f"Subtract {b} from {a} digit by digit from the right."
            steps, result = _sub_steps(a, b), "difference"
        else:
            question, answer = f"What is {a} + {b}?", a + b
            intro = f"Add {a} and {b} digit by digit from the right."
            steps, result = _add_steps(a, b), "sum"
    think = "\n".join([intro, *steps, f"So the {result} is {answer}."])
    output = f"<think>\n{think}\n</think>\nThe answer is \\boxed{{{answer}}}."
    return {"question": question, "answer": str(answer), "output": output, "task": "math"}


def make_problems(n: int, seed: int, split: str) -> list[dict]:
    """``n`` distinct problems of ``split`` ("train" or "test"), deterministic in ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{seed}-{split}")
    problems, seen = [], set()
    while len(problems) < n:
        p = _make_problem(rng)
        if p["question"] not in seen and _split_of(p["question"]) == split:
            seen.add(p["question"])
            problems.append(p)
    return problems


def rl_prompt_id(index: int) -> str:
    """The id of the ``index``-th train problem as an RL prompt (nemo_ext/rl/prompts.py)."""
    return f"synthetic-{index}"


def write_split(path: str | Path, n: int, seed: int, split: str, rl_format: bool = False) -> Path:
    """``make_problems(n, seed, split)`` as JSONL, written atomically: SFT rows ``{question, output,
    answer, task}``, or with ``rl_format`` RL prompts ``{id, question, answer}``."""
    rows = make_problems(n, seed, split)
    if rl_format:
        rows = [{"id": rl_prompt_id(i), "question": p["question"], "answer": p["answer"]} for i, p in enumerate(rows)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)
