"""LiveCodeBench (``livecodebench/code_generation_lite``) rows -> code problems with decoded tests.

Schema (every column a string): ``question_id``, ``question_content``, ``starter_code`` ("" for stdin
problems), ``contest_date`` (ISO), ``public_test_cases`` (JSON), ``private_test_cases`` (JSON in old
shards, else base64 -> zlib -> pickle -> a JSON string), ``metadata`` (JSON; ``func_name`` for
functional problems). A test is ``{input, output, testtype}``, testtype ``stdin`` or ``functional``.

The pickle layer is read by an unpickler that refuses every global, so a payload can only build
plain data (the JSON string it is meant to hold), never call code. Decoding is done once per run:
the runner caches the decoded problems as JSON (``problems.jsonl``).

Date windows are half-open, [start, end), as in the AceReason-Nemotron 1.1 paper's v5 / v6 counts
(LiveCodeBench's own filter includes both ends).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from datetime import date, datetime

from nemo_ext.evaluation.registry import BenchmarkSpec, TestSelection

TEST_TYPES = ("stdin", "functional")


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - the whole point is to refuse
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from test data")


def encode_private_tests(tests: list[dict]) -> str:
    """The compressed form LiveCodeBench uses: base64(zlib(pickle(json string))). For fixtures."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


def decode_tests(raw: str | list, where: str) -> list[dict]:
    """A test list from its stored form: JSON first, else base64 -> zlib -> pickle -> JSON string."""
    if isinstance(raw, list):
        tests = raw
    else:
        try:
            tests = json.loads(raw)
        except json.JSONDecodeError:
            try:
                packed = zlib.decompress(base64.b64decode(raw, validate=True))
                payload = _NoGlobalsUnpickler(io.BytesIO(packed)).load()
                tests = json.loads(payload) if isinstance(payload, str | bytes) else payload
            except (binascii.Error, zlib.error, pickle.UnpicklingError, json.JSONDecodeError, EOFError) as e:
                raise ValueError(f"{where}: tests are neither JSON nor base64/zlib/pickle/JSON: {e}") from e
    if not isinstance(tests, list):
        raise ValueError(f"{where}: tests must decode to a list, got {type(tests).__name__}")
    for k, test in enumerate(tests):
        if not isinstance(test, dict) or not {"input", "output", "testtype"} <= test.keys():
            raise ValueError(f"{where}: test {k} must be an object with input, output, testtype; "
                             f"got {test!r:.200}")
        if test["testtype"] not in TEST_TYPES:
            raise ValueError(f"{where}: test {k} has testtype {test['testtype']!r}, "
                             f"expected one of {TEST_TYPES}")
    return [{"input": t["input"], "output": t["output"], "testtype": t["testtype"]} for t in tests]


def parse_date(value: str, where: str) -> date:
    """An ISO date or datetime string ("2024-08-03" or "2024-08-03T00:00:00") as a date."""
    try:
        return datetime.fromisoformat(str(value)).date()
    except ValueError as err:
        raise ValueError(f"{where}: expected an ISO date, got {value!r}") from err


def in_window(day: date, start: str | None, end: str | None, where: str = "contest_dates") -> bool:
    """Whether ``day`` lies in the half-open window [start, end); a null bound is unbounded."""
    if start is not None and day < parse_date(start, f"{where}.start"):
        return False
    return end is None or day < parse_date(end, f"{where}.end")


def _column(row: dict, name: str | None, key: str, where: str) -> object:
    if name is None:
        raise ValueError(f"{where}: the livecodebench loader needs `fields.{key}`")
    if name not in row:
        raise KeyError(f"{where}: missing column {name!r} (columns: {sorted(row)})")
    return row[name]


def problem_from_row(row: dict, spec: BenchmarkSpec, where: str) -> dict | None:
    """The problem of one row, or None when its contest date falls outside the entry's window."""
    f = spec.fields
    day = parse_date(_column(row, f.date, "date", where), f"{where} column {f.date!r}")
    if not in_window(day, spec.contest_dates.start, spec.contest_dates.end):
        return None
    problem = problem_fields(row, spec, where)
    if not problem["tests"]:
        raise ValueError(f"{where}: no tests to grade with (tests: {spec.tests.value})")
    return {**problem, "date": day.isoformat()}


def problem_fields(row: dict, spec: BenchmarkSpec, where: str) -> dict:
    """``{id, task, question, starter_code, tests, func_name}`` of one row, dates not read; ``tests``
    (``spec.tests``: private, or public then private) may be empty. Errors name the row and column."""
    f = spec.fields

    def col(name: str | None, key: str) -> object:
        return _column(row, name, key, where)

    tests = decode_tests(col(f.private_tests, "private_tests"), f"{where} column {f.private_tests!r}")
    if spec.tests is TestSelection.public_private:
        public = decode_tests(col(f.public_tests, "public_tests"), f"{where} column {f.public_tests!r}")
        tests = public + tests
    raw_meta = col(f.metadata, "metadata") if f.metadata else "{}"
    try:
        metadata = json.loads(raw_meta or "{}") if isinstance(raw_meta, str) else dict(raw_meta)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{where} column {f.metadata!r}: not a JSON object: {err}") from err
    functional = any(t["testtype"] == "functional" for t in tests)
    func_name = str(metadata.get("func_name") or "")
    if functional and not func_name:
        raise ValueError(f"{where}: functional tests but no `func_name` in column {f.metadata!r}")
    return {
        "id": str(col(f.id, "id")),
        "task": "code",
        "question": str(col(f.question, "question")),
        "starter_code": str(col(f.starter_code, "starter_code") or "") if f.starter_code else "",
        "tests": tests,
        "func_name": func_name,
    }
