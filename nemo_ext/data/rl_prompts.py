"""RL prompt files: source rows -> the JSONL that ``nemo_ext.rl.prompts.load_stage_prompts`` reads.

AceReason-Nemotron 1.1's "RL data" row (/work/shared/PAPER.md): about 49K math problems
(``nvidia/AceReason-Math``, fields ``problem`` and ``answer``) and 8,520 code problems (AtCoder,
LeetCode, Aizu; problems after 2024-08-01 dropped; 14-gram decontamination). Output, one JSON object a
line (the format of ``nemo_ext/rl/prompts.py``):

- math: ``{"id": str, "question": str, "answer": str}`` (an int or float answer becomes its string);
- code: ``{"id": str, "question": str, "tests": [{"input", "output", "testtype"[, "fn_name"]}...],
  "starter_code": str}`` (``starter_code`` only when non-empty; functional tests carry ``fn_name``,
  which ``nemo_ext.rewards.code`` needs).

Code rows come in two shapes, told apart per row: the project's (a ``tests`` list, checked by
``nemo_ext.rewards.code.validate_tests``), or LiveCodeBench's (``question_id``, ``question_content``,
``starter_code``, ``public_test_cases``, ``private_test_cases`` (plain or compressed), ``metadata``
with ``func_name``), parsed by ``nemo_ext.evaluation.livecodebench.problem_fields``.

Steps, in order (a row dropped by one is not seen by the next): malformed rows reported with their
location and skipped (or fatal under ``strict``); the date filter (keep rows dated strictly before
``before``; rows without a date dropped or kept, ``undated``); code rows without tests dropped; exact
dedup on the normalized question (``curate_text.PromptDedup``, the first row kept); word n-gram
decontamination of the question against benchmarks (``curate.benchmark_index``); an id already
written is a malformed row. Left out: difficulty filtering (the RL stages' prompt filter does it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from nemo_ext.data.curate import NORMALIZATION, BenchmarkSources, benchmark_index, benchmark_report, mark_contaminated
from nemo_ext.data.curate_text import PromptDedup, normalize_prompt, text_hash64
from nemo_ext.data.sources import TASKS, ChatFields, MalformedRowError, Row, chat_sample, open_rows, skip_malformed
from nemo_ext.evaluation.livecodebench import parse_date, problem_fields
from nemo_ext.evaluation.registry import BenchmarkSpec, FieldsSpec, TestSelection
from nemo_ext.evaluation.registry import Task as BenchTask
from nemo_ext.evaluation.runner import reference_of
from nemo_ext.io import atomic_write, atomic_write_json
from nemo_ext.output_lock import OutputLock
from nemo_ext.rewards.code import validate_tests

log = logging.getLogger(__name__)

FORMAT = "nemo_ext RL prompts v1 (nemo_ext/rl/prompts.py)"
METADATA_SUFFIX = ".metadata.json"  # beside the output: <output>.metadata.json
UNDATED = ("drop", "keep")
CHUNK_ROWS = 1024  # rows decontaminated together
# The LiveCodeBench columns (../shared/FACTS.md); a row holding either test column is read this way.
LCB_FIELDS = FieldsSpec(id="question_id", question="question_content", answer=None, starter_code="starter_code",
                        public_tests="public_test_cases", private_tests="private_test_cases", metadata="metadata")
# Per-task defaults, the one place they live. ngram: 14 for code (PAPER.md "RL data"); 9 for math is the
# SFT "cleaning" row's value (the paper gives none for RL math). before: PAPER.md "RL data" (code only).
TASK_DEFAULTS = {
    "math": dict(question_field="problem", answer_field="answer", id_field=None, date_field=None, before=None,
                 ngram=9),
    "code": dict(question_field="question", answer_field=None, id_field="id", date_field="contest_date",
                 before="2024-08-01", ngram=14),
}


@dataclass(frozen=True)
class RLPromptConfig:
    """One conversion run; ``task_config`` fills the per-task defaults. A field set to None is unused:
    id_field None = ids are the dedup key's hex; before None = no date filter."""

    task: str
    input: str
    output: str
    question_field: str
    answer_field: str | None  # math only
    id_field: str | None
    date_field: str | None
    before: str | None  # ISO date: keep rows dated strictly before it
    ngram: int
    undated: str = "drop"  # rows without a date when `before` is set
    lcb_tests: str = TestSelection.public_private.value  # LiveCodeBench rows: public + private, or private
    benchmarks: BenchmarkSources = BenchmarkSources()
    split: str = "train"
    strict: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.undated not in UNDATED:
            raise ValueError(f"undated must be one of {UNDATED}, got {self.undated!r}")
        if self.lcb_tests not in {t.value for t in TestSelection}:
            raise ValueError(f"lcb_tests must be one of {[t.value for t in TestSelection]}, got {self.lcb_tests!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not self.question_field:
            raise ValueError("a question field is required (--question-field)")
        if self.task == "math" and not self.answer_field:
            raise ValueError("task math needs an answer field (--answer-field)")
        if self.before is not None:
            parse_date(self.before, "before")
            if not self.date_field:
                raise ValueError(f"a date cutoff (--before {self.before}) needs a date field (--date-field)")


def task_config(task: str, input: str, output: str, **options) -> RLPromptConfig:
    """The config of ``task`` with its ``TASK_DEFAULTS``; an option given as None keeps the default,
    one given as "" turns the setting off (None in the config)."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task must be one of {tuple(TASK_DEFAULTS)}, got {task!r}")
    given = {k: (v if v != "" else None) for k, v in options.items() if v is not None}
    return RLPromptConfig(task=task, input=input, output=output, **{**TASK_DEFAULTS[task], **given})


@dataclass
class RLPromptStats:
    """read = malformed + after_cutoff + undated_dropped + no_tests + duplicates + contaminated + written."""

    read: int = 0
    malformed: int = 0  # includes rows whose id repeats a written row's
    after_cutoff: int = 0  # dated on or after `before`
    undated_dropped: int = 0
    undated_kept: int = 0  # undated rows let through the date step (later steps may still drop them)
    no_tests: int = 0
    duplicates: int = 0  # same normalized question as an earlier kept row
    contaminated: int = 0
    written: int = 0
    contaminated_by_benchmark: dict[str, int] = field(default_factory=dict)  # a row counts for each it hits
    overlap_examples: dict[str, list[dict]] = field(default_factory=dict)
    malformed_examples: list[str] = field(default_factory=list)


def math_prompt(row: Row, cfg: RLPromptConfig) -> dict:
    """``{id, question, answer}`` of a math row (id None until assigned); ``MalformedRowError`` names the key."""
    question = _question(row, cfg.question_field)
    answer = row.record.get(cfg.answer_field)
    if isinstance(answer, bool) or not isinstance(answer, str | int | float) or not str(answer).strip():
        raise MalformedRowError(f"{row.location}: field {cfg.answer_field!r} is {answer!r:.80}, expected a "
                                "non-empty string or number")
    return {"id": _id(row, cfg), "question": question, "answer": str(answer).strip()}


def code_prompt(row: Row, cfg: RLPromptConfig) -> dict:
    """``{id, question, tests[, starter_code]}`` of a code row in either shape; tests may be empty."""
    record = row.record
    if "tests" in record or not (LCB_FIELDS.public_tests in record or LCB_FIELDS.private_tests in record):
        prompt_id, question = _id(row, cfg), _question(row, cfg.question_field)
        tests, starter = record.get("tests"), record.get("starter_code") or ""
        if not isinstance(tests, list) or not isinstance(starter, str):
            raise MalformedRowError(f"{row.location}: expected a list 'tests' and a string 'starter_code' (or "
                                    f"LiveCodeBench columns); got {type(tests).__name__}, {type(starter).__name__}")
        try:
            if tests:
                validate_tests(tests)
        except ValueError as e:
            raise MalformedRowError(f"{row.location}: field 'tests': {e}") from e
    else:
        spec = BenchmarkSpec(task=BenchTask.code, fields=LCB_FIELDS, tests=TestSelection(cfg.lcb_tests))
        try:
            problem = problem_fields(record, spec, row.location)
        except (KeyError, ValueError) as e:
            raise MalformedRowError(e.args[0] if isinstance(e, KeyError) else str(e)) from e
        prompt_id, question = problem["id"], _question(row, LCB_FIELDS.question)
        tests, starter = reference_of(problem), problem["starter_code"]
    out = {"id": prompt_id, "question": question, "tests": tests}
    return {**out, "starter_code": starter} if starter.strip() else out


def _question(row: Row, key: str) -> str:
    """The non-empty string field ``key`` (``chat_sample`` checks it, as curation does for prompt-only rows)."""
    return chat_sample(row, ChatFields(prompt=key, response=key, task="", default_task="math"))[0]


def _id(row: Row, cfg: RLPromptConfig) -> str | None:
    if cfg.id_field is None:
        return None
    value = row.record.get(cfg.id_field)
    if value is None or isinstance(value, dict | list) or not str(value).strip():
        raise MalformedRowError(f"{row.location}: field {cfg.id_field!r} is {value!r:.80}, expected an id "
                                "(pass --id-field '' for ids hashed from the question)")
    return str(value)


def row_date(row: Row, cfg: RLPromptConfig) -> date | None:
    """The row's date (None when it has none); a value that is no ISO date is malformed."""
    value = row.record.get(cfg.date_field) if cfg.date_field else None
    if value is None or str(value).strip() == "":
        return None
    try:
        return parse_date(value, f"{row.location}: field {cfg.date_field!r}")
    except ValueError as e:
        raise MalformedRowError(str(e)) from e


def parse_row(row: Row, cfg: RLPromptConfig) -> tuple[dict, date | None]:
    """(prompt, date) of a row, or ``MalformedRowError`` starting with its location."""
    if row.error is not None or not isinstance(row.record, dict):
        why = row.error or f"expected a JSON object, got {type(row.record).__name__}"
        raise MalformedRowError(f"{row.location}: {why}")
    prompt = math_prompt(row, cfg) if cfg.task == "math" else code_prompt(row, cfg)
    return prompt, row_date(row, cfg)


def date_verdict(day: date | None, cfg: RLPromptConfig) -> str | None:
    """None to keep the row, else the count it goes to: "after_cutoff", "undated_dropped" (or "undated_kept",
    which keeps it). The cutoff day itself is dropped: kept rows are dated strictly before ``cfg.before``."""
    if cfg.before is None:
        return None
    if day is None:
        return "undated_dropped" if cfg.undated == "drop" else "undated_kept"
    return "after_cutoff" if day >= parse_date(cfg.before, "before") else None


Kept = tuple[str, dict, int]  # (location, prompt, dedup key)


def select(rows: Iterable[Row], cfg: RLPromptConfig, stats: RLPromptStats) -> Iterator[Kept]:
    """The rows that pass parsing, the date filter, the test check and dedup; the others counted in ``stats``."""
    dedup = PromptDedup()
    for row in rows:
        stats.read += 1
        try:
            prompt, day = parse_row(row, cfg)
        except MalformedRowError as e:
            skip_malformed(e, cfg.strict, stats)
            continue
        verdict = date_verdict(day, cfg)
        if verdict == "undated_kept":
            stats.undated_kept += 1
        elif verdict:
            setattr(stats, verdict, getattr(stats, verdict) + 1)
            continue
        if cfg.task == "code" and not prompt["tests"]:
            stats.no_tests += 1
            continue
        key = text_hash64(normalize_prompt(prompt["question"]))
        if reason := dedup.admit(key, ""):
            setattr(stats, reason, getattr(stats, reason) + 1)
            continue
        yield row.location, prompt, key


def decontaminate(kept: Iterable[Kept], index, stats: RLPromptStats) -> Iterator[Kept]:
    """The rows whose question shares no n-gram with a benchmark problem (checked ``CHUNK_ROWS`` at a time)."""
    kept = iter(kept)
    while chunk := list(islice(kept, CHUNK_ROWS)):
        rows = [(i, loc, prompt["question"], "", key) for i, (loc, prompt, key) in enumerate(chunk)]
        flags = mark_contaminated(index, rows, "prompt", stats)
        stats.contaminated += sum(flags)
        yield from (r for r, bad in zip(chunk, flags, strict=True) if not bad)


def assign_ids(clean: Iterable[Kept], cfg: RLPromptConfig, stats: RLPromptStats) -> Iterator[dict]:
    """The prompts with ids (the dedup key's 16 hex digits where the row gave none); a repeated id is malformed."""
    first: dict[str, str] = {}
    for location, prompt, key in clean:
        prompt_id = prompt["id"] if prompt["id"] is not None else f"{key:016x}"
        if prompt_id in first:
            skip_malformed(MalformedRowError(f"{location}: duplicate id {prompt_id!r} (first at {first[prompt_id]})"),
                           cfg.strict, stats)
            continue
        first[prompt_id] = location
        yield {**prompt, "id": prompt_id}


def _columns(cfg: RLPromptConfig) -> list[str]:
    names = [cfg.question_field, cfg.answer_field, cfg.id_field, cfg.date_field]
    if cfg.task == "code":
        names += ["tests", "starter_code", *(v for v in asdict(LCB_FIELDS).values() if isinstance(v, str))]
    return list(dict.fromkeys(n for n in names if n))


def build_prompts(cfg: RLPromptConfig, progress: bool = True) -> dict:
    """Run the conversion of ``cfg``: writes ``cfg.output`` and ``<output>.metadata.json`` atomically
    (the data first), holding the output's lock (``OutputLock``); returns the metadata. Raises ValueError
    when no prompt is left."""
    with OutputLock(cfg.output):
        return _build_prompts(cfg, progress)


def _build_prompts(cfg: RLPromptConfig, progress: bool) -> dict:
    if Path(cfg.output).resolve() == Path(cfg.input).resolve():
        raise ValueError(f"--output {cfg.output} would replace the input")
    index = benchmark_index(cfg.benchmarks, cfg.ngram)
    if not index.names:
        log.warning("no benchmarks given: nothing is decontaminated")
    stats = RLPromptStats(contaminated_by_benchmark=dict.fromkeys(index.names, 0),
                          overlap_examples={name: [] for name in index.names})
    rows, total = open_rows(cfg.input, _columns(cfg), cfg.split)
    digest = hashlib.sha256()

    def write(tmp: str) -> None:
        with tqdm(rows, total=total, unit="row", desc=f"{cfg.task} prompts", disable=not progress) as bar, \
                open(tmp, "w", encoding="utf-8") as f:
            for prompt in assign_ids(decontaminate(select(bar, cfg, stats), index, stats), cfg, stats):
                line = json.dumps(prompt, ensure_ascii=False) + "\n"
                f.write(line)
                digest.update(line.encode("utf-8"))
                stats.written += 1
            if not stats.written:  # raised inside: the temporary file is removed, the old output kept
                raise ValueError(f"{cfg.input}: no prompt left to write; counts: {_counts(stats)}")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(cfg.output, write)
    meta = metadata(cfg, stats, index, digest.hexdigest())
    atomic_write_json(metadata_path(cfg.output), meta)
    return meta


def metadata_path(output: str) -> str:
    return output + METADATA_SUFFIX


def _counts(stats: RLPromptStats) -> dict[str, int]:
    return {k: v for k, v in asdict(stats).items() if isinstance(v, int)}


def metadata(cfg: RLPromptConfig, stats: RLPromptStats, index, sha256: str) -> dict:
    """``<output>.metadata.json`` (docs/rl.md, "RL prompts", lists its keys)."""
    settings = asdict(replace(cfg, input=os.path.abspath(cfg.input) if os.path.exists(cfg.input) else cfg.input))
    return {
        "format": FORMAT,
        "output": os.path.abspath(cfg.output),
        "sha256": sha256,
        "settings": settings,
        "normalization": NORMALIZATION,
        "counts": _counts(stats),
        "benchmarks": benchmark_report(index, stats),
        "malformed_examples": stats.malformed_examples,
    }
