"""The code RL set from public sources (data_prep/rl_prompts.py --task code): CodeContests (Parquet) and
LiveCodeBench (JSONL) readers, the platform / file / date filters, dedup, 14-gram decontamination and
test validation in the reward's sandbox, counted per source, on the fixtures of tests/fixtures/rl_code."""

from __future__ import annotations

import json
import re
import shlex
from itertools import takewhile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.rl_prompts import main as rl_prompts_main
from nemo_ext.config.rl import StageConfig, Task
from nemo_ext.data.sources import MalformedRowError, Row
from nemo_ext.prep.code_sources import CODE_CONTESTS_DATE_BOUND, read_code_row
from nemo_ext.prep.code_validation import validate
from nemo_ext.prep.curate import BenchmarkSources
from nemo_ext.prep.rl_prompts import DROPS, build_prompts, metadata_path, task_config
from nemo_ext.rewards.code import validate_tests
from nemo_ext.rl.prompts import load_stage_prompts
from tests.fixtures.rl_code.make_fixtures import CODE_CONTESTS_SCHEMA
from tests.fixtures.rl_code.make_fixtures import main as make_fixtures

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "rl_code"
CODE_CONTESTS = FIXTURES / "code_contests"
LCB = FIXTURES / "livecodebench" / "test.jsonl"
OWN = FIXTURES / "nemo_ext" / "rows.jsonl"
BENCH = FIXTURES / "benchmark_lcb"
BENCHMARKS = BenchmarkSources(names=("lcb_v5", "lcb_v6"), overrides=(
    f"benchmarks.lcb_v5.source.path={BENCH}", f"benchmarks.lcb_v6.source.path={BENCH}"))
WRITTEN = ["p02000 Add Two Integers", "p00002 Maximum of Three", "2870", "abc360_a", "own-parity"]


@pytest.fixture(scope="module")
def pool():
    from nemo_ext.rewards import RewardPool

    with RewardPool(2) as p:
        yield p


def cc_rows() -> list[dict]:
    return pq.read_table(CODE_CONTESTS).to_pylist()


def build(tmp_path: Path, pool, **options) -> tuple[list[dict], dict]:
    out = tmp_path / "code.jsonl"
    cfg = task_config("code", (str(CODE_CONTESTS), str(LCB), str(OWN)), str(out), benchmarks=BENCHMARKS, **options)
    meta = build_prompts(cfg, progress=False, pool=pool)
    return [json.loads(line) for line in out.read_text().splitlines()], meta


def test_committed_fixtures_are_what_the_generator_writes(tmp_path):
    make_fixtures(tmp_path)
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        committed = FIXTURES / path.relative_to(tmp_path)
        if path.suffix == ".parquet":
            assert pq.read_table(committed).equals(pq.read_table(path))
        else:
            assert committed.read_text() == path.read_text()
    # CodeContests' Parquet types: structs of string lists, class labels as int64
    assert pq.read_schema(CODE_CONTESTS / "train-00000-of-00001.parquet").equals(CODE_CONTESTS_SCHEMA)


def test_code_contests_reader(tmp_path):
    cfg = task_config("code", "in", "out")
    row = cc_rows()[0]  # p02000: public, private and generated tests; a C++ and a Python 3 solution
    problem = read_code_row(Row("f row 0", row), cfg)
    stdin = [{"input": i, "output": o, "testtype": "stdin"} for i, o in (("1 2\n", "3\n"), ("-5 5\n", "0\n"),
                                                                          ("1000 1000\n", "2000\n"))]
    assert problem.prompt == {"id": "p02000 Add Two Integers", "question": row["description"], "tests": stdin}
    assert problem.source == "code_contests/atcoder" and problem.day == CODE_CONTESTS_DATE_BOUND
    assert problem.solutions == (row["solutions"]["solution"][1],) and len(problem.incorrect) == 1
    assert problem.validated and not problem.file_io
    # class labels by name, a test-set selection and a cap
    named = {**row, "source": "AIZU", "solutions": {"language": ["PYTHON3", "CPP"], "solution": ["x = 1", "y"]}}
    picked_cfg = task_config("code", "in", "out", code_contests_tests=("private", "public"), max_tests=1)
    picked = read_code_row(Row("f row 0", named), picked_cfg)
    assert picked.source == "code_contests/aizu" and picked.solutions == ("x = 1",)
    assert picked.prompt["tests"] == [{"input": "-5 5\n", "output": "0\n", "testtype": "stdin"}]
    assert read_code_row(Row("f row 7", cc_rows()[7]), cfg).file_io  # input_file: input.txt
    with pytest.raises(MalformedRowError, match=r"^f row 0: column 'private_tests' must be \{input: \[str\]"):
        read_code_row(Row("f row 0", {**row, "private_tests": {"input": ["1"], "output": []}}), cfg)
    with pytest.raises(MalformedRowError, match=r"^f row 0: column 'source' is 99, expected a class label 0-6"):
        read_code_row(Row("f row 0", {**row, "source": 99}), cfg)


def test_validation_runs_the_solutions_in_the_reward_sandbox(pool):
    cfg = task_config("code", "in", "out")
    problems = [read_code_row(Row(f"f row {i}", r), cfg) for i, r in enumerate(cc_rows()[:6])]
    outcomes = validate(problems, pool, "full", tries=3)
    assert [o.reason for o in outcomes] == [None, None, "incorrect_passed", "correct_failed", "no_python_solution",
                                            "no_incorrect_solution"]
    # p00002's first Python 3 solution is Python 2 code; the second passes; the incorrect one fails
    assert outcomes[1].verdicts == ["correct[0]: syntax_error", "correct[1]: accepted",
                                    "incorrect[0]: wrong_answer on test 0"]
    assert outcomes[3].verdicts == ["correct[0]: wrong_answer on test 0"]  # pi printed to 15 digits, 8 expected
    assert outcomes[0].isolation in ("bwrap", "rlimits")
    assert [o.reason for o in validate(problems, pool, "correct", tries=1)] == [
        None, "correct_failed", None, "correct_failed", "no_python_solution", None]  # one try: p00002 fails


def test_fixture_set_counts_per_source_and_filter(tmp_path, pool):
    out, meta = build(tmp_path, pool)
    assert [r["id"] for r in out] == WRITTEN
    counts = meta["counts"]
    assert counts["read"] == sum(counts[k] for k in DROPS) + counts["written"] == 20
    assert {k: counts[k] for k in DROPS if counts[k]} == {
        "malformed": 2, "other_platform": 2, "file_io": 1, "after_cutoff": 1, "undated_dropped": 1, "no_tests": 1,
        "duplicates": 1, "contaminated": 2, "no_python_solution": 1, "no_incorrect_solution": 1, "correct_failed": 1,
        "incorrect_passed": 1}
    assert (counts["validated"], counts["not_validated"]) == (3, 2)
    by_source = meta["counts_by_source"]
    for per in by_source.values():
        assert per["read"] == sum(per[k] for k in DROPS) + per["written"]
    assert {s: per["written"] for s, per in by_source.items() if per["written"]} == {
        "code_contests/atcoder": 1, "code_contests/aizu": 1, "livecodebench/leetcode": 1, "livecodebench/atcoder": 1,
        "nemo_ext/aizu": 1}
    assert by_source["livecodebench/atcoder"]["duplicates"] == 1  # p02000's question, upper-cased, re-spaced
    assert by_source["code_contests/aizu"]["contaminated"] == by_source["livecodebench/atcoder"]["contaminated"] == 1
    assert meta["benchmarks"]["lcb_v5"]["examples"][0]["problem"] == "abc370_c"
    assert meta["validation"]["examples"]["incorrect_passed"][0]["id"] == "p00003 Absolute Value"
    assert meta["settings"]["platforms"] == ("atcoder", "aizu", "leetcode")
    assert json.loads(Path(metadata_path(str(tmp_path / "code.jsonl"))).read_text()) == json.loads(json.dumps(meta))
    # every row is a code prompt the RL stage loads and the reward accepts
    prompts = load_stage_prompts(StageConfig(name="c", task=Task.code, data=str(tmp_path / "code.jsonl"), steps=1), 0)
    assert list(prompts) == WRITTEN and all(validate_tests(p.reference) for p in prompts.values())


def test_filters_can_be_turned_off(tmp_path, pool):
    out, meta = build(tmp_path, pool, validation="off", platforms="", before="")
    written = {r["id"] for r in out}
    assert {"p00003 Absolute Value", "p02004 Circle Area", "p02005 Reverse a String", "1000_A. Codehorses T-shirts",
            "1920_A", "abc366_a"} <= written
    assert meta["counts"]["not_validated"] == len(out)
    assert "p02008 Copy a File" not in written  # file I/O is no filter: the sandbox cannot run it


def docs_fixture_command() -> list[str]:
    """The fixture command in docs/rl.md's code-set section (after its `python` word)."""
    text = (REPO / "docs" / "rl.md").read_text()
    block = re.search(r"```\n(python data_prep/rl_prompts.py --task code --input tests/fixtures.*?)```", text, re.S)
    return shlex.split(block.group(1).replace("\\\n", " "))[2:]


def docs_table() -> dict[str, dict[str, int]]:
    """docs/rl.md's fixture count table (a row per count, a column per source): {source: {count: n}}."""
    text = (REPO / "docs" / "rl.md").read_text()
    lines = list(takewhile(lambda line: line.startswith("|"),
                           text.split("<!-- fixture counts -->")[1].strip().splitlines()))
    cells = [[c.strip().strip("`") for c in line.strip("|").split("|")] for line in lines]
    sources, rows = cells[0][1:], cells[2:]
    return {source: {row[0]: int(row[1 + j]) for row in rows} for j, source in enumerate(sources)}


def test_docs_command_and_table_are_the_fixture_run(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the command's paths are relative to the checkout
    argv = docs_fixture_command()
    out = tmp_path / "code.jsonl"
    argv[argv.index("--output") + 1] = str(out)
    assert rl_prompts_main([*argv, "--workers", "2"]) == 0
    meta = json.loads(Path(metadata_path(str(out))).read_text())
    table = docs_table()
    assert set(table) == set(meta["counts_by_source"]) | {"all"}
    for source, column in table.items():
        counts = meta["counts"] if source == "all" else meta["counts_by_source"][source]
        assert list(column) == ["read", *DROPS, "written"]
        assert column == {k: counts[k] for k in column}, source
