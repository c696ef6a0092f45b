"""Score a JSONL file of responses (what ``eval/score.py`` runs): resumable, append-only, row by row.

Input rows carry ``response`` plus ``answer`` (math: a string, or an integer for AIME) or ``tests``
(code: a list of test dicts, see ``nemo_ext.rewards.code``). Output rows are the input rows with
``reward``, ``verdict``, ``extracted`` and ``seconds`` added, in input order, each flushed as it is
written. A rerun skips the rows the output already holds (it checks that they are the same rows) and
drops a half-written last line. Malformed rows are reported with their line number and not written.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nemo_ext.rewards.code import validate_tests
from nemo_ext.rewards.pool import RewardPool

REFERENCE_KEY = {"math": "answer", "code": "tests"}
ADDED_KEYS = ("reward", "verdict", "extracted", "seconds")


@dataclass(frozen=True)
class Summary:
    scored: int  # rows scored in this run
    resumed: int  # rows found already scored in the output
    malformed: int  # input rows reported and skipped
    mean_reward: float  # over the rows scored in this run (nan if none)


def check_row(task: str, line: str) -> dict:
    """Parse and check one input line; raises ValueError with the reason."""
    try:
        row = json.loads(line)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("response"), str):
        raise ValueError(f"key 'response' must be a string, got {row.get('response')!r:.60}")
    key = REFERENCE_KEY[task]
    if key not in row:
        raise ValueError(f"missing key {key!r} ({task} rows need it)")
    if task == "math" and (isinstance(row[key], bool) or not isinstance(row[key], str | int)):
        raise ValueError(f"key 'answer' must be a string or an integer, got {row[key]!r:.60}")
    if task == "code":
        validate_tests(row[key])
    return row


def read_rows(task: str, path: Path) -> tuple[list[dict], list[str]]:
    """Valid rows of ``path`` in order, and one "path:line: reason" message per malformed row."""
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(check_row(task, line))
            except ValueError as e:
                problems.append(f"{path}:{number}: {e}")
    return rows, problems


def already_scored(output: Path, rows: list[dict]) -> int:
    """How many leading ``rows`` the output holds; truncates a half-written last line first."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(output, "r+b") as f:
            f.truncate(len(complete))
    done = complete.decode("utf-8").splitlines()
    if len(done) > len(rows):
        raise ValueError(f"{output} holds {len(done)} rows but the input has only {len(rows)} valid rows; "
                         "use a new --output")
    for i, line in enumerate(done):
        if json.loads(line).get("response") != rows[i]["response"]:
            raise ValueError(f"{output} row {i + 1} does not match input row {i + 1}; use a new --output")
    return len(done)


def score_file(task: str, input_path: str | Path, output_path: str | Path, workers: int = 4,
               batch_size: int = 64, progress: bool = True) -> Summary:
    """Score every valid row of ``input_path`` not yet in ``output_path``; see the module docstring."""
    if task not in REFERENCE_KEY:
        raise ValueError(f"task must be one of {tuple(REFERENCE_KEY)}, got {task!r}")
    input_path, output_path = Path(input_path), Path(output_path)
    rows, problems = read_rows(task, input_path)
    for problem in problems:
        print(problem, file=sys.stderr)
    resumed = already_scored(output_path, rows)
    todo = rows[resumed:]
    rewards: list[float] = []
    if not todo:
        return Summary(scored=0, resumed=resumed, malformed=len(problems), mean_reward=float("nan"))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with RewardPool(workers=workers) as pool, open(output_path, "a", encoding="utf-8") as out, \
            tqdm(total=len(todo), unit="row", desc=f"score {task}", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            references = [row[REFERENCE_KEY[task]] for row in batch]
            if task == "math":
                references = [str(answer) for answer in references]
            verdicts = pool.score(task, [row["response"] for row in batch], references)
            for row, v in zip(batch, verdicts, strict=True):
                scored = dict(row, reward=v.reward, verdict=v.verdict, extracted=v.extracted,
                              seconds=v.seconds)
                out.write(json.dumps(scored, ensure_ascii=False) + "\n")
                out.flush()
                rewards.append(v.reward)
                bar.update(1)
        os.fsync(out.fileno())
    return Summary(scored=len(todo), resumed=resumed, malformed=len(problems),
                   mean_reward=sum(rewards) / len(rewards))
