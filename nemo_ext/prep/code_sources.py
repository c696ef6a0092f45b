"""Code problems from public sources -> the RL code rows of ``nemo_ext/rl/prompts.py``, one reader per schema.

The schema is told apart row by row (``schema_of``):

- ``nemo_ext``: the project's own rows: ``question``, a ``tests`` list of ``{input, output, testtype
  [, fn_name]}``, optional ``starter_code``, ``platform`` (a judge's name) and ``solutions`` /
  ``incorrect_solutions`` (lists of Python 3 programs, validated like CodeContests' when present).
- ``livecodebench``: ``livecodebench/code_generation_lite`` (JSONL shards ``test.jsonl`` ...; licence tag
  "cc"; ../shared/FACTS.md): ``question_id``, ``question_content``, ``platform`` (leetcode, atcoder,
  codeforces), ``contest_date``, ``starter_code``, ``public_test_cases`` / ``private_test_cases`` (plain or
  compressed JSON), ``metadata`` (``func_name``), parsed by ``nemo_ext.evaluation.livecodebench``. It
  ships no solutions.
- ``code_contests``: DeepMind's CodeContests (``deepmind/code_contests``, Parquet shards
  ``data/{train,valid,test}-*.parquet``, CC BY 4.0; AlphaCode, arXiv 2203.07814): ``name``,
  ``description``, ``public_tests`` / ``private_tests`` / ``generated_tests`` each ``{input: [str],
  output: [str]}``, ``source`` (class label: 0 UNKNOWN_SOURCE, 1 CODECHEF, 2 CODEFORCES, 3 HACKEREARTH,
  4 CODEJAM, 5 ATCODER, 6 AIZU; AtCoder and Aizu come from IBM's CodeNet), ``solutions`` /
  ``incorrect_solutions`` each ``{language: [int], solution: [str]}`` (0 UNKNOWN_LANGUAGE, 1 PYTHON
  (Python 2), 2 CPP, 3 PYTHON3, 4 JAVA), ``input_file`` / ``output_file`` (non-empty: the program
  reads or writes files, not stdin/stdout), and fields not read here (``difficulty``, ``cf_*``,
  ``time_limit``, ``memory_limit_bytes``, ``is_description_translated``, ...). Class labels may also
  come as their names (``"ATCODER"``). It has no dates: every problem predates its publication, so a
  row is dated ``CODE_CONTESTS_DATE_BOUND``, an upper bound the date filter can use.

Every reader returns a ``CodeProblem``, or raises ``MalformedRowError`` naming the row and the column.
Tests become stdin tests ``{"input", "output", "testtype": "stdin"}`` (CodeContests) or keep their
LiveCodeBench form, are cut to ``max_tests`` when it is set, and are checked by
``nemo_ext.rewards.code.validate_tests``, the check the reward itself makes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

from nemo_ext.data.sources import ChatFields, MalformedRowError, Row, chat_sample
from nemo_ext.evaluation.livecodebench import parse_date, problem_fields
from nemo_ext.evaluation.registry import BenchmarkSpec, FieldsSpec, TestSelection
from nemo_ext.evaluation.registry import Task as BenchTask
from nemo_ext.evaluation.runner import reference_of
from nemo_ext.rewards.code import validate_tests

SCHEMAS = ("nemo_ext", "livecodebench", "code_contests")
# The LiveCodeBench columns (../shared/FACTS.md); a row holding either test column is read this way.
LCB_FIELDS = FieldsSpec(id="question_id", question="question_content", answer=None, starter_code="starter_code",
                        public_tests="public_test_cases", private_tests="private_test_cases", metadata="metadata")
CC_SOURCES = ("UNKNOWN_SOURCE", "CODECHEF", "CODEFORCES", "HACKEREARTH", "CODEJAM", "ATCODER", "AIZU")
CC_LANGUAGES = ("UNKNOWN_LANGUAGE", "PYTHON", "CPP", "PYTHON3", "JAVA")
PYTHON3 = CC_LANGUAGES.index("PYTHON3")  # 3: the only language the sandbox runs (PYTHON is Python 2)
CC_TEST_SETS = {"public": "public_tests", "private": "private_tests", "generated": "generated_tests"}
CC_COLUMNS = ("name", "description", *CC_TEST_SETS.values(), "source", "solutions", "incorrect_solutions",
              "input_file", "output_file")
# AlphaCode's paper (arXiv 2203.07814, March 2022) published CodeContests: its problems are no later.
CODE_CONTESTS_DATE_BOUND = date(2022, 3, 31)
UNSPECIFIED = "unspecified"  # the platform of a project row that names none


@dataclass(frozen=True)
class CodeProblem:
    """One parsed code row. prompt: ``{id, question, tests[, starter_code]}`` (tests may be empty);
    source: ``<schema>/<platform>``; day: its date (None: undated); solutions / incorrect: Python 3
    programs shipped with it; validated: whether its source ships solutions (then they decide whether
    it is kept); file_io: the program must read or write named files (the sandbox gives stdin/stdout)."""

    prompt: dict
    source: str
    day: date | None
    solutions: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()
    validated: bool = False
    file_io: bool = False


def required_text(row: Row, key: str) -> str:
    """The non-empty string field ``key`` (``chat_sample`` checks it, as curation does for prompt-only rows)."""
    return chat_sample(row, ChatFields(prompt=key, response=key, task="", default_task="math"))[0]


def optional_id(row: Row, key: str | None) -> str | None:
    """The id in field ``key`` (None when ``key`` is None: ids are assigned later)."""
    if key is None:
        return None
    value = row.record.get(key)
    if value is None or isinstance(value, dict | list) or not str(value).strip():
        raise MalformedRowError(f"{row.location}: field {key!r} is {value!r:.80}, expected an id "
                                "(pass --id-field '' for ids hashed from the question)")
    return str(value)


def schema_of(record: dict) -> str:
    """Which reader a row needs: its own ``tests`` list wins, then LiveCodeBench's test columns, then
    CodeContests' description and test sets; anything else is read (and reported) as a project row."""
    if "tests" in record:
        return "nemo_ext"
    if LCB_FIELDS.public_tests in record or LCB_FIELDS.private_tests in record:
        return "livecodebench"
    if "description" in record and any(column in record for column in CC_TEST_SETS.values()):
        return "code_contests"
    return "nemo_ext"


def platform_of(record: dict, schema: str) -> str:
    """The judge a row comes from, lower case ("atcoder", "aizu", "leetcode", ...); "unknown" when the
    row's platform value cannot be read, ``UNSPECIFIED`` for a project row that names none."""
    if schema == "code_contests":
        try:
            return _cc_platform(_class_label(record.get("source"), CC_SOURCES, "source", ""))
        except MalformedRowError:
            return "unknown"
    value = record.get("platform")
    if value is None and schema == "nemo_ext":
        return UNSPECIFIED
    return value.strip().lower() if isinstance(value, str) and value.strip() else "unknown"


def source_of(row: Row) -> str:
    """``<schema>/<platform>`` of a row, also for one that will not parse (``unparsed`` if not an object)."""
    if row.error is not None or not isinstance(row.record, dict):
        return "unparsed"
    schema = schema_of(row.record)
    return f"{schema}/{platform_of(row.record, schema)}"


def read_code_row(row: Row, cfg) -> CodeProblem:
    """The ``CodeProblem`` of a row in any of ``SCHEMAS``. cfg: the run's ``RLPromptConfig`` (reads
    question_field, id_field and date_field for project rows; lcb_tests, code_contests_tests, max_tests)."""
    schema = schema_of(row.record)
    reader = {"nemo_ext": _project_row, "livecodebench": _lcb_row, "code_contests": _code_contests_row}[schema]
    problem = reader(row, cfg)
    tests = problem.prompt["tests"][: cfg.max_tests] if cfg.max_tests else problem.prompt["tests"]
    try:
        if tests:
            validate_tests(tests)
    except ValueError as e:
        what = "field 'tests'" if schema == "nemo_ext" else f"its {schema} tests"
        raise MalformedRowError(f"{row.location}: {what}: {e}") from e
    return replace(problem, prompt={**problem.prompt, "tests": tests})


def _prompt(prompt_id: str | None, question: str, tests: list, starter: str) -> dict:
    out = {"id": prompt_id, "question": question, "tests": tests}
    return {**out, "starter_code": starter} if starter.strip() else out


def row_date(row: Row, key: str | None) -> date | None:
    """The date in field ``key`` (None when ``key`` is None or the row has none); a value that is no ISO
    date is malformed."""
    value = row.record.get(key) if key else None
    if value is None or str(value).strip() == "":
        return None
    try:
        return parse_date(value, f"{row.location}: field {key!r}")
    except ValueError as e:
        raise MalformedRowError(str(e)) from e


def _programs(row: Row, key: str) -> tuple[str, ...]:
    value = row.record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRowError(f"{row.location}: field {key!r} must be a list of Python 3 programs (strings)")
    return tuple(v for v in value if v.strip())


def _project_row(row: Row, cfg) -> CodeProblem:
    record = row.record
    prompt_id, question = optional_id(row, cfg.id_field), required_text(row, cfg.question_field)
    tests, starter = record.get("tests"), record.get("starter_code") or ""
    if not isinstance(tests, list) or not isinstance(starter, str):
        raise MalformedRowError(f"{row.location}: expected a list 'tests' and a string 'starter_code' (or "
                                f"LiveCodeBench or CodeContests columns); got {type(tests).__name__}, "
                                f"{type(starter).__name__}")
    solutions, incorrect = _programs(row, "solutions"), _programs(row, "incorrect_solutions")
    return CodeProblem(_prompt(prompt_id, question, tests, starter), f"nemo_ext/{platform_of(record, 'nemo_ext')}",
                       row_date(row, cfg.date_field), solutions, incorrect,
                       validated="solutions" in record or "incorrect_solutions" in record)


def _lcb_row(row: Row, cfg) -> CodeProblem:
    spec = BenchmarkSpec(task=BenchTask.code, fields=LCB_FIELDS, tests=TestSelection(cfg.lcb_tests))
    try:
        problem = problem_fields(row.record, spec, row.location)
    except (KeyError, ValueError) as e:
        raise MalformedRowError(e.args[0] if isinstance(e, KeyError) else str(e)) from e
    question = required_text(row, LCB_FIELDS.question)
    prompt = _prompt(problem["id"], question, reference_of(problem), problem["starter_code"])
    return CodeProblem(prompt, f"livecodebench/{platform_of(row.record, 'livecodebench')}",
                       row_date(row, cfg.date_field))


def _class_label(value, names: tuple[str, ...], column: str, where: str) -> str:
    """A CodeContests class label, given as its index or its name, as its name."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.upper() in names:
        return value.upper()
    raise MalformedRowError(f"{where}: column {column!r} is {value!r:.40}, expected a class label 0-{len(names) - 1} "
                            f"or one of {names}")


def _cc_platform(label: str) -> str:
    return label.lower().removesuffix("_source")  # UNKNOWN_SOURCE -> unknown


def _cc_tests(row: Row, column: str) -> list[dict]:
    value = row.record.get(column)
    if value is None:
        return []
    inputs, outputs = (value.get("input"), value.get("output")) if isinstance(value, dict) else (None, None)
    if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)
            and all(isinstance(s, str) for s in inputs + outputs)):
        raise MalformedRowError(f"{row.location}: column {column!r} must be {{input: [str], output: [str]}} "
                                f"of equal lengths, got {value!r:.120}")
    return [{"input": i, "output": o, "testtype": "stdin"} for i, o in zip(inputs, outputs, strict=True)]


def _cc_python3(row: Row, column: str) -> tuple[str, ...]:
    value = row.record.get(column)
    if value is None:
        return ()
    languages, programs = (value.get("language"), value.get("solution")) if isinstance(value, dict) else (None, None)
    if not (isinstance(languages, list) and isinstance(programs, list) and len(languages) == len(programs)):
        raise MalformedRowError(f"{row.location}: column {column!r} must be {{language: [int], solution: [str]}} "
                                f"of equal lengths, got {value!r:.120}")
    where = f"{row.location}: column {column!r}"
    return tuple(p for lang, p in zip(languages, programs, strict=True)
                 if _class_label(lang, CC_LANGUAGES, "language", where) == "PYTHON3" and isinstance(p, str)
                 and p.strip())


def _code_contests_row(row: Row, cfg) -> CodeProblem:
    record = row.record
    name, question = required_text(row, "name"), required_text(row, "description")
    platform = _cc_platform(_class_label(record.get("source"), CC_SOURCES, "source", row.location))
    tests = [t for which in cfg.code_contests_tests for t in _cc_tests(row, CC_TEST_SETS[which])]
    file_io = any(isinstance(record.get(k), str) and record[k].strip() for k in ("input_file", "output_file"))
    return CodeProblem(_prompt(name, question, tests, ""), f"code_contests/{platform}", CODE_CONTESTS_DATE_BOUND,
                       _cc_python3(row, "solutions"), _cc_python3(row, "incorrect_solutions"), validated=True,
                       file_io=file_io)
