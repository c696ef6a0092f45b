"""The one problem reader (nemo_ext/data/problems.py): RL prompt files, held-out sets and benchmark
rows become the same problem, and a bad row fails the same way whichever path reads it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nemo_ext.config.rl import StageConfig
from nemo_ext.config.schema import HeldoutConfig
from nemo_ext.data.problems import problem_from_row, read_problems, synthetic_problems
from nemo_ext.evaluation.heldout import heldout_problems, heldout_spec
from nemo_ext.evaluation.loaders import load_problems
from nemo_ext.rl.prompts import load_stage_prompts
from tests.helpers import write_jsonl

ROWS = [{"question": "  What is 2 + 3?  ", "answer": 5}, {"id": "b", "question": "And 4 * 4?", "answer": " 16 "}]


def test_rl_prompts_held_out_sets_and_benchmark_rows_read_alike(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    read = read_problems(path, "math")
    assert read == [{"id": "1", "task": "math", "question": "  What is 2 + 3?  ", "starter_code": "", "answer": "5"},
                    {"id": "b", "task": "math", "question": "And 4 * 4?", "starter_code": "", "answer": "16"}]
    stage = load_stage_prompts(StageConfig(name="s", data=str(path), steps=1), seed=0)
    assert [(p.id, p.reference) for p in stage.values()] == [("1", "5"), ("b", "16")]
    heldout = heldout_problems(HeldoutConfig(num_problems=5, file=str(path)))
    assert [(p["question"], p["answer"]) for p in heldout] == [(p["question"], p["answer"]) for p in read]
    assert [p["id"] for p in heldout] == ["0", "1"]  # a benchmark entry without an id column numbers its rows


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q"}, "missing key 'answer'"),
    ({"question": 3, "answer": "1"}, "key 'question' has type int, expected str"),
    ({"question": "q", "answer": ["1"]}, "key 'answer' has type list, expected str or int or float"),
    ({"question": "q", "answer": "  "}, "key 'answer' holds no answer"),
])
def test_a_bad_row_is_the_same_error_on_every_path(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "1"}, row])
    with pytest.raises(ValueError, match=f"bad.jsonl:2: {message}"):
        load_stage_prompts(StageConfig(name="s", data=str(path), steps=1), seed=0)
    spec = heldout_spec(HeldoutConfig(file=str(path)))
    with pytest.raises(ValueError, match=f"bad.jsonl row 1: {message}"):
        load_problems("held-out", spec)


def test_code_rows_need_tests_and_a_string_starter_code():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    ok = problem_from_row({"question": "q", "tests": tests, "starter_code": "def f():"}, "code", "f:1", "1")
    assert ok == {"id": "1", "task": "code", "question": "q", "starter_code": "def f():", "tests": tests}
    with pytest.raises(ValueError, match="f:1: key 'tests' is empty"):
        problem_from_row({"question": "q", "tests": []}, "code", "f:1", "1")
    with pytest.raises(ValueError, match="f:1: key 'starter_code' has type int"):
        problem_from_row({"question": "q", "tests": tests, "starter_code": 3}, "code", "f:1", "1")


def test_the_synthetic_held_out_set_is_the_embedded_benchmark():
    from nemo_ext.evaluation.config import DEFAULT_REGISTRY
    from nemo_ext.evaluation.registry import load_registry

    embedded = load_registry(DEFAULT_REGISTRY).benchmarks["embedded"]
    spec = heldout_spec(HeldoutConfig(num_problems=embedded.source.num_problems, seed=embedded.source.seed))
    assert load_problems("x", spec) == load_problems("embedded", replace(embedded, samples=1))
    assert heldout_problems(HeldoutConfig(num_problems=3)) == synthetic_problems(3, 0, "test")
    assert json.dumps(heldout_problems(HeldoutConfig(num_problems=0))) == "[]"
