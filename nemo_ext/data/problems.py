"""Problems: the one reader of problem rows (a question and what its answer is checked against), for
RL prompt files, held-out sets and benchmark rows alike.

A problem is a dict: ``{id, task, question, starter_code, answer}`` for math (``answer`` a stripped
string) or ``{id, task, question, starter_code, tests}`` for code (``tests`` a non-empty list of
``{input, output, testtype[, fn_name]}``, the format of ``nemo_ext.rewards.code``); loaders of other
formats (LiveCodeBench rows, ``nemo_ext.evaluation.livecodebench``) build the same dict. A bad row
is an error that names its location (``file:line``, ``source row i``) and the key; nothing is
dropped silently. ``problem_prompt`` renders any problem with the paper's format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.sources import jsonl_objects
from nemo_ext.data.synthetic import make_problems

TASKS = ("math", "code")


@dataclass(frozen=True)
class ProblemColumns:
    """The row keys holding each part of a problem; ``id`` or ``starter_code`` None: not in the rows."""

    id: str | None = "id"
    question: str = "question"
    answer: str = "answer"  # math
    tests: str = "tests"  # code
    starter_code: str | None = "starter_code"


def problem_from_row(row: dict, task: str, where: str, default_id: str | None,
                     columns: ProblemColumns = ProblemColumns()) -> dict:
    """The problem of one row. default_id: the id when the row has no ``columns.id`` (a line or row
    number); None makes the id column required."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if columns.id is not None and columns.id in row:
        problem_id = str(row[columns.id])
    elif default_id is not None:
        problem_id = default_id
    else:
        raise ValueError(f"{where}: missing key {columns.id!r} (the id; keys: {sorted(row)})")
    problem = {"id": problem_id, "task": task, "question": _value(row, columns.question, str, where)}
    starter = row.get(columns.starter_code) if columns.starter_code else None
    if starter is not None and not isinstance(starter, str):
        raise ValueError(f"{where}: key {columns.starter_code!r} has type {type(starter).__name__}, expected str")
    problem["starter_code"] = starter or ""
    if task == "math":
        answer = _value(row, columns.answer, (str, int, float), where)
        if isinstance(answer, bool) or str(answer).strip() == "":
            raise ValueError(f"{where}: key {columns.answer!r} holds no answer ({answer!r})")
        problem["answer"] = str(answer).strip()
    else:
        tests = _value(row, columns.tests, list, where)
        if not tests:
            raise ValueError(f"{where}: key {columns.tests!r} is empty; a code problem needs at least one test")
        problem["tests"] = tests
    return problem


def read_problems(path: str | Path, task: str, columns: ProblemColumns = ProblemColumns(),
                  limit: int | None = None) -> list[dict]:
    """The problems of a JSON Lines file, in file order: the first ``limit`` (None: all). A row without
    an id gets its line number; ids must be unique."""
    problems: list[dict] = []
    seen: set[str] = set()
    for where, row in jsonl_objects(path):
        problem = problem_from_row(row, task, where, default_id=where.rsplit(":", 1)[1], columns=columns)
        if problem["id"] in seen:
            raise ValueError(f"{where}: duplicate id {problem['id']!r}")
        seen.add(problem["id"])
        problems.append(problem)
        if limit is not None and len(problems) == limit:
            break
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def synthetic_problems(n: int, seed: int, split: str, ids: Callable[[int], str] = str) -> list[dict]:
    """``n`` problems of the embedded arithmetic task's ``split``, the ``i``-th with id ``ids(i)``."""
    return [{"id": ids(i), "task": "math", "question": p["question"], "starter_code": "", "answer": p["answer"]}
            for i, p in enumerate(make_problems(n, seed=seed, split=split))]


def problem_prompt(problem: dict) -> str:
    """The paper's prompt for ``problem`` (``nemo_ext.data.prompts``)."""
    return render_prompt(problem["question"], problem["task"], problem.get("starter_code", ""))


def _value(row: dict, key: str, kind, where: str):
    if key not in row:
        raise ValueError(f"{where}: missing key {key!r} (keys: {sorted(row)})")
    if not isinstance(row[key], kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: key {key!r} has type {type(row[key]).__name__}, expected {expected}")
    return row[key]
