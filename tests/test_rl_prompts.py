"""RL prompt files (data_prep/rl_prompts.py): math and code rows -> the JSONL that load_stage_prompts reads,
with the date cutoff, dedup, 14-gram decontamination and malformed-row reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.rl_prompts import main as rl_prompts_main
from nemo_ext.config.rl import StageConfig, Task
from nemo_ext.data.curate_text import normalize_prompt, text_hash64
from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.sources import MalformedRowError
from nemo_ext.evaluation.livecodebench import encode_private_tests
from nemo_ext.prep.curate import BenchmarkSources
from nemo_ext.prep.rl_prompts import DROPS, build_prompts, metadata_path, task_config
from nemo_ext.rl.prompts import load_stage_prompts
from tests.helpers import write_jsonl

STDIN = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
# 20 distinct words: a benchmark problem whose 14-grams contaminate
BENCH_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
               "oscar papa quebec romeo sierra tango").split()


# every count of metadata.json, all zero
ZEROS = dict.fromkeys(("read", *DROPS, "written", "undated_kept", "validated", "not_validated"), 0)


def hash_id(question: str) -> str:
    return f"{text_hash64(normalize_prompt(question)):016x}"


def run(tmp_path: Path, task: str, rows: list, raw_lines: dict | None = None, **options) -> tuple[list, dict]:
    src = write_jsonl(tmp_path / f"{task}_in.jsonl", rows, raw_lines)
    out = tmp_path / "rl" / f"{task}.jsonl"
    meta = build_prompts(task_config(task, str(src), str(out), **options), progress=False)
    assert json.loads(Path(metadata_path(str(out))).read_text()) == json.loads(json.dumps(meta))
    return [json.loads(line) for line in out.read_text().splitlines()], meta


def lcb_row(qid: str, question: str, day: str, **kw) -> dict:
    row = {"question_title": qid, "question_content": question, "platform": "atcoder", "question_id": qid,
           "contest_id": qid, "contest_date": day, "starter_code": "", "difficulty": "easy",
           "public_test_cases": json.dumps(STDIN), "private_test_cases": json.dumps([]), "metadata": "{}"}
    return {**row, **kw}


def test_task_defaults():
    math, code = task_config("math", "in", "out"), task_config("code", "in", "out")
    assert (math.question_field, math.answer_field, math.id_field, math.before, math.ngram) == (
        "problem", "answer", None, None, 9)
    assert (code.question_field, code.id_field, code.date_field, code.before, code.ngram) == (
        "question", "id", "contest_date", "2024-08-01", 14)
    assert task_config("code", "in", "out", before="").before is None  # '' turns the cutoff off
    with pytest.raises(ValueError, match="before: expected an ISO date"):
        task_config("code", "in", "out", before="Aug 1")


def test_math_rows_converted_deduplicated_and_ids_hashed(tmp_path):
    rows = [
        {"problem": "What is $2+2$?", "answer": "4"},
        {"problem": "Find x if 3x = 12.", "answer": 4},  # an int answer becomes a string
        {"problem": "  what IS $2+2$?\n", "answer": "4.0"},  # same normalized question: a duplicate
        {"problem": "Compute 1/2 + 1/4.", "answer": " \\frac{3}{4} "},
    ]
    out, meta = run(tmp_path, "math", rows)
    assert out == [
        {"id": hash_id("What is $2+2$?"), "question": "What is $2+2$?", "answer": "4"},
        {"id": hash_id("Find x if 3x = 12."), "question": "Find x if 3x = 12.", "answer": "4"},
        {"id": hash_id("Compute 1/2 + 1/4."), "question": "Compute 1/2 + 1/4.", "answer": "\\frac{3}{4}"},
    ]
    assert meta["counts"] == {**ZEROS, "read": 4, "duplicates": 1, "written": 3}
    assert meta["counts_by_source"] == {"math": meta["counts"]} and "validation" not in meta
    assert meta["settings"]["ngram"] == 9 and meta["benchmarks"] == {}

    # the id from a field; a repeated id is a malformed row naming both places
    rows = [{"uid": "a", "problem": "P one", "answer": "1"}, {"uid": "a", "problem": "P two", "answer": "2"}]
    out, meta = run(tmp_path, "math", rows, id_field="uid")
    assert out == [{"id": "a", "question": "P one", "answer": "1"}]
    src = tmp_path / "math_in.jsonl"
    assert meta["malformed_examples"] == [f"{src}:2: duplicate id 'a' (first at {src}:1)"]


def test_code_rows_in_both_shapes(tmp_path):
    functional = [{"input": "1\n2", "output": "3", "testtype": "functional"}]
    rows = [
        {"id": "p1", "question": "Add A and B.", "tests": STDIN, "contest_date": "2024-01-05"},
        {"id": "p2", "question": "Implement addTwo.", "starter_code": "class Solution:\n    def addTwo(self, a, b):",
         "tests": [dict(functional[0], fn_name="addTwo")], "contest_date": "2023-11-30"},
        {"id": "p3", "question": "No tests here.", "tests": [], "contest_date": "2024-01-05"},
        lcb_row("abc300_a", "Print A+B.", "2024-07-31T00:00:00",
                private_test_cases=encode_private_tests([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}])),
        lcb_row("3000", "Return a+b.", "2024-03-01T00:00:00", platform="leetcode",
                starter_code="class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        ",
                public_test_cases=json.dumps(functional), metadata=json.dumps({"func_name": "addTwo"})),
    ]
    out, meta = run(tmp_path, "code", rows)
    assert out == [
        {"id": "p1", "question": "Add A and B.", "tests": STDIN},
        {"id": "p2", "question": "Implement addTwo.", "tests": [dict(functional[0], fn_name="addTwo")],
         "starter_code": "class Solution:\n    def addTwo(self, a, b):"},
        # LiveCodeBench rows: public tests then the decoded private ones; functional tests get fn_name
        {"id": "abc300_a", "question": "Print A+B.",
         "tests": STDIN + [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]},
        {"id": "3000", "question": "Return a+b.", "tests": [dict(functional[0], fn_name="addTwo")],
         "starter_code": "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        "},
    ]
    assert meta["counts"]["no_tests"] == 1 and meta["counts"]["written"] == 4
    out, _ = run(tmp_path, "code", rows[3:4], lcb_tests="private")
    assert out[0]["tests"] == [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]


def test_date_cutoff_keeps_strictly_before_2024_08_01(tmp_path):
    rows = [
        lcb_row("on_cutoff", "Problem dated on the cutoff.", "2024-08-01T00:00:00"),
        lcb_row("day_before", "Problem dated a day before.", "2024-07-31T23:59:59"),
        {"id": "undated", "question": "Problem without a date.", "tests": STDIN},
        {"id": "null_date", "question": "Problem with a null date.", "tests": STDIN, "contest_date": None},
        {"id": "plain_day", "question": "A plain ISO day on the cutoff.", "tests": STDIN, "contest_date": "2024-08-01"},
    ]
    out, meta = run(tmp_path, "code", rows)
    assert [r["id"] for r in out] == ["day_before"]
    counts = meta["counts"]
    assert (counts["after_cutoff"], counts["undated_dropped"], counts["undated_kept"]) == (2, 2, 0)

    out, meta = run(tmp_path, "code", rows, undated="keep")
    assert [r["id"] for r in out] == ["day_before", "undated", "null_date"]
    assert meta["counts"]["undated_kept"] == 2
    out, meta = run(tmp_path, "code", rows, before="")  # no cutoff: every row, none counted undated
    assert len(out) == 5 and meta["counts"]["undated_dropped"] == meta["counts"]["undated_kept"] == 0


def test_14_gram_overlap_dropped_13_kept(tmp_path):
    bench = write_jsonl(tmp_path / "lcb_bench.jsonl", [{"problem": " ".join(BENCH_WORDS)}])
    shares_14 = "Read the input. " + ", ".join(BENCH_WORDS[3:17]) + ". Then print it."
    shares_13 = "Read the input. " + " ".join(BENCH_WORDS[3:16]) + " zulu " + " ".join(BENCH_WORDS[17:]) + "."
    rows = [{"id": "c14", "question": shares_14, "tests": STDIN}, {"id": "c13", "question": shares_13, "tests": STDIN}]
    out, meta = run(tmp_path, "code", rows, before="", benchmarks=BenchmarkSources(files=(str(bench),)))
    assert [r["id"] for r in out] == ["c13"]
    assert meta["counts"]["contaminated"] == 1
    report = meta["benchmarks"]["lcb_bench"]
    assert report["contaminated"] == 1 and report["problems"] == 1 and report["ngrams"] == 20 - 14 + 1
    assert report["examples"] == [{"row": f"{tmp_path / 'code_in.jsonl'}:1", "problem": f"{bench}:1",
                                   "ngram": " ".join(BENCH_WORDS[3:17])}]


def test_malformed_rows_reported_with_file_and_line(tmp_path):
    rows = [{"problem": "Good one.", "answer": "1"}, {"problem": "No answer."}, {"problem": "", "answer": "2"},
            {"problem": "List answer.", "answer": [1]}, {"problem": "Good two.", "answer": "2"}]
    out, meta = run(tmp_path, "math", rows, raw_lines={2: "{not json"})
    src = tmp_path / "math_in.jsonl"
    assert [r["question"] for r in out] == ["Good one.", "Good two."]
    assert meta["counts"]["malformed"] == 4 and meta["counts"]["read"] == 6
    messages = meta["malformed_examples"]
    assert [m.split(": ")[0] for m in messages] == [f"{src}:{n}" for n in (2, 3, 4, 5)]
    assert "not valid JSON" in messages[0] and "field 'answer' is None" in messages[1]
    assert "field 'problem' is empty" in messages[2] and "field 'answer' is [1]" in messages[3]

    with pytest.raises(MalformedRowError, match=rf"^{src}:2: not valid JSON"):
        run(tmp_path, "math", rows, raw_lines={2: "{not json"}, strict=True)
    code = [{"id": "f", "question": "Functional without fn_name.", "tests": [dict(STDIN[0], testtype="functional")]},
            lcb_row("bad", "Compressed garbage.", "2024-01-01", private_test_cases="!!notbase64")]
    _, meta = run(tmp_path, "code", code + [{"id": "ok", "question": "Fine.", "tests": STDIN}], before="")
    code_src = tmp_path / "code_in.jsonl"
    assert meta["malformed_examples"][0].startswith(f"{code_src}:1: field 'tests': tests[0]: functional tests need")
    assert meta["malformed_examples"][1].startswith(f"{code_src}:2 column 'private_test_cases': tests are neither")


def test_output_loads_as_stage_prompts(tmp_path):
    math_out, _ = run(tmp_path, "math", [{"problem": "What is 6 times 7?", "answer": 42}])
    math_prompts = load_stage_prompts(StageConfig(name="m", data=str(tmp_path / "rl" / "math.jsonl"), steps=1), 0)
    (prompt,) = math_prompts.values()
    assert prompt.id == math_out[0]["id"] and prompt.reference == "42"
    assert "What is 6 times 7?" in prompt.text and prompt.text == render_prompt("What is 6 times 7?", "math")

    starter = "class Solution:\n    def f(self, a):"
    rows = [{"id": "c", "question": "Return a.", "starter_code": starter,
             "tests": [{"input": "1", "output": "1", "testtype": "functional", "fn_name": "f"}]}]
    run(tmp_path, "code", rows, before="")
    code = load_stage_prompts(StageConfig(name="c", task=Task.code, data=str(tmp_path / "rl" / "code.jsonl"),
                                          steps=1), 0)
    assert "Return a." in code["c"].text and code["c"].text == render_prompt("Return a.", "code", starter)
    assert code["c"].reference == rows[0]["tests"]


def test_cli_end_to_end_and_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"problem": "One plus one?", "answer": "2"}])
    out = tmp_path / "data" / "rl.jsonl"
    assert rl_prompts_main(["--task", "math", "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["written"] == 1 and printed["metadata"] == f"{out}.metadata.json"
    assert json.loads(out.read_text()) == {"id": hash_id("One plus one?"), "question": "One plus one?", "answer": "2"}

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Wrong field.", "answer": "1"}])
    assert rl_prompts_main(["--task", "math", "--input", str(bad), "--output", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the log lines
    assert err.startswith(f"rl_prompts: error: {bad}: no prompt left") and "'malformed': 1" in err
    assert json.loads(out.read_text())["question"] == "One plus one?"  # the previous output is kept
