"""eval/score.py, run as a user runs it: fields kept and added, malformed rows reported, resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_ext.rewards.files import already_scored, check_row

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "eval/score.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def math_row(i: int, boxed: str, answer) -> dict:
    return {"id": i, "response": f"<think>\nhmm\n</think>\n\\boxed{{{boxed}}}", "answer": answer}


def test_math_scoring_and_malformed_rows(tmp_path):
    rows = [math_row(0, "\\frac12", "0.5"), "{not json", math_row(1, "7", 8), {"id": 9, "answer": "1"},
            math_row(2, "33", 33), {"response": "x", "answer": [1]}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = run_cli("--task", "math", "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.jsonl"), "--workers", "1")
    assert result.returncode == 0, result.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], r["reward"], r["verdict"], r["extracted"]) for r in out] == [
        (0, 1.0, "accepted", "\\frac12"), (1, 0.0, "wrong_answer", "7"), (2, 1.0, "accepted", "33")]
    assert out[0]["answer"] == "0.5" and out[0]["response"] == rows[0]["response"]  # input fields kept
    assert all(r["seconds"] >= 0 for r in out)
    assert f"{tmp_path / 'in.jsonl'}:2: not valid JSON" in result.stderr
    assert f"{tmp_path / 'in.jsonl'}:4: key 'response' must be a string" in result.stderr
    assert f"{tmp_path / 'in.jsonl'}:6: key 'answer' must be a string or an integer" in result.stderr
    assert "scored 3 rows" in result.stderr and "3 malformed" in result.stderr


def test_resume_skips_scored_rows_and_drops_a_torn_line(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [math_row(i, str(i), str(i)) for i in range(4)])
    done = dict(math_row(0, "0", "0"), reward=1.0, verdict="accepted", extracted="0", seconds=0.0)
    # a previous run wrote row 0, then died halfway through writing row 1
    (tmp_path / "out.jsonl").write_text(json.dumps(done) + "\n" + json.dumps(math_row(1, "1", "1"))[:20])
    result = run_cli("--task", "math", "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.jsonl"), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "scored 3 rows" in result.stderr and "1 already in" in result.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [0, 1, 2, 3] and out[0] == done
    again = run_cli("--task", "math", "--input", str(tmp_path / "in.jsonl"), "--output",
                    str(tmp_path / "out.jsonl"))
    assert "scored 0 rows" in again.stderr and "4 already in" in again.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == out


def test_refuses_an_output_from_other_input(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [math_row(0, "1", "1")])
    write_jsonl(tmp_path / "out.jsonl", [dict(math_row(5, "9", "9"), reward=1.0)])
    result = run_cli("--task", "math", "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.jsonl"))
    assert result.returncode == 1 and "row 1 does not match input row 1" in result.stderr


def test_code_scoring(tmp_path):
    tests = [{"input": "2\n", "output": "4", "testtype": "stdin"}]
    rows = [{"response": "</think>```python\nprint(int(input()) * 2)\n```", "tests": tests},
            {"response": "</think>```python\nprint(0)\n```", "tests": tests},
            {"response": "</think>```python\nprint(0)\n```", "tests": [{"input": "1"}]}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = run_cli("--task", "code", "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.jsonl"), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert [(r["reward"], r["verdict"]) for r in read_jsonl(tmp_path / "out.jsonl")] == [
        (1.0, "accepted"), (0.0, "wrong_answer")]
    assert ":3: tests[0]: key 'output' must be a string" in result.stderr


@pytest.mark.parametrize("line, message", [
    ("[1, 2]", "expected a JSON object"),
    ('{"response": "x"}', "missing key 'answer'"),
    ('{"response": "x", "answer": true}', "must be a string or an integer"),
])
def test_check_row(line, message):
    with pytest.raises(ValueError, match=message):
        check_row("math", line)


def test_already_scored_rejects_a_longer_output(tmp_path):
    write_jsonl(tmp_path / "out.jsonl", [{"response": "a"}, {"response": "b"}])
    with pytest.raises(ValueError, match="holds 2 rows but the input has only 1"):
        already_scored(tmp_path / "out.jsonl", [{"response": "a"}])
