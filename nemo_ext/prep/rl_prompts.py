"""RL prompt files: source rows -> the JSONL that ``nemo_ext.rl.prompts.load_stage_prompts`` reads.

AceReason-Nemotron 1.1's "RL data" row (/work/shared/PAPER.md): about 49K math problems
(``nvidia/AceReason-Math``, fields ``problem`` and ``answer``) and 8,520 code problems (AtCoder,
LeetCode, Aizu; problems after 2024-08-01 dropped; 14-gram decontamination). Output, one JSON object a
line (the format of ``nemo_ext/rl/prompts.py``):

- math: ``{"id": str, "question": str, "answer": str}`` (an int or float answer becomes its string);
- code: ``{"id": str, "question": str, "tests": [{"input", "output", "testtype"[, "fn_name"]}...],
  "starter_code": str}`` (``starter_code`` only when non-empty; functional tests carry ``fn_name``,
  which ``nemo_ext.rewards.code`` needs).

Code rows come in three schemas, told apart per row and read by ``nemo_ext.data.code_sources``: the
project's, LiveCodeBench's ``code_generation_lite`` and DeepMind's CodeContests. Several inputs may be
given; their rows are read in order.

Steps, in order (a row dropped by one is not seen by the next): malformed rows reported with their
location and skipped (or fatal under ``strict``); code: the platform filter (``platforms``) and
problems that need file I/O; the date filter (keep rows dated strictly before ``before``; rows without
a date dropped or kept, ``undated``); code rows without tests dropped; exact dedup on the normalized
question (``curate_text.PromptDedup``, the first row kept); word n-gram decontamination of the question
against benchmarks (``curate.benchmark_index``); code: test validation of problems whose source ships
solutions (``nemo_ext.data.code_validation``, in the reward's sandbox); an id already written is a
malformed row. Every count is kept per source (``<schema>/<platform>``) too. Left out: difficulty
filtering (the RL stages' prompt filter does it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from itertools import chain, islice
from pathlib import Path

from tqdm import tqdm

from nemo_ext.data.curate_text import PromptDedup, normalize_prompt, text_hash64
from nemo_ext.data.sources import TASKS, MalformedRowError, Row, open_rows, skip_malformed
from nemo_ext.evaluation.livecodebench import parse_date
from nemo_ext.evaluation.registry import TestSelection
from nemo_ext.io import atomic_write, atomic_write_json
from nemo_ext.output_lock import OutputLock
from nemo_ext.prep.code_sources import (
    CC_COLUMNS,
    CC_TEST_SETS,
    LCB_FIELDS,
    UNSPECIFIED,
    CodeProblem,
    optional_id,
    read_code_row,
    required_text,
    row_date,
    source_of,
)
from nemo_ext.prep.code_validation import DROP_REASONS, VALIDATION_MODES, validate
from nemo_ext.prep.curate import NORMALIZATION, BenchmarkSources, benchmark_index, benchmark_report, mark_contaminated

log = logging.getLogger(__name__)

FORMAT = "nemo_ext RL prompts v1 (nemo_ext/rl/prompts.py)"
METADATA_SUFFIX = ".metadata.json"  # beside the output: <output>.metadata.json
UNDATED = ("drop", "keep")
CHUNK_ROWS = 1024  # rows decontaminated (and validated) together
MAX_VALIDATION_EXAMPLES = 5  # per drop reason
MATH_SOURCE = "math"  # the per-source key of math rows
# The paper's judges (PAPER.md "RL data": AtCoder, LeetCode, Aizu).
PAPER_PLATFORMS = ("atcoder", "aizu", "leetcode")
# Per-task defaults, the one place they live. ngram: 14 for code (PAPER.md "RL data"); 9 for math is the
# SFT "cleaning" row's value (the paper gives none for RL math). before: PAPER.md "RL data" (code only).
TASK_DEFAULTS = {
    "math": dict(question_field="problem", answer_field="answer", id_field=None, date_field=None, before=None,
                 ngram=9, platforms=None, validation="off"),
    "code": dict(question_field="question", answer_field=None, id_field="id", date_field="contest_date",
                 before="2024-08-01", ngram=14, platforms=PAPER_PLATFORMS, validation="full"),
}


@dataclass(frozen=True)
class RLPromptConfig:
    """One conversion run; ``task_config`` fills the per-task defaults. A field set to None is unused:
    id_field None = ids are the dedup key's hex; before None = no date filter; platforms None = every
    platform; max_tests None = every test."""

    task: str
    input: tuple[str, ...]  # sources, read in order (a single string is one source)
    output: str
    question_field: str
    answer_field: str | None  # math only
    id_field: str | None
    date_field: str | None
    before: str | None  # ISO date: keep rows dated strictly before it
    ngram: int
    undated: str = "drop"  # rows without a date when `before` is set
    platforms: tuple[str, ...] | None = None  # code: keep rows of these judges (rows naming none pass)
    lcb_tests: str = TestSelection.public_private.value  # LiveCodeBench rows: public + private, or private
    code_contests_tests: tuple[str, ...] = tuple(CC_TEST_SETS)  # CodeContests test sets, in this order
    max_tests: int | None = None  # code: keep a problem's first N tests
    validation: str = "off"  # code problems shipping solutions: full, correct or off (code_validation)
    validation_tries: int = 3  # solutions tried per side
    workers: int = 0  # sandbox workers of the validation; 0 = one per CPU core
    test_timeout_s: float = 6.0  # per test, as the reward's default
    benchmarks: BenchmarkSources = BenchmarkSources()
    split: str = "train"
    strict: bool = False

    def __post_init__(self):
        if isinstance(self.input, str):
            object.__setattr__(self, "input", (self.input,))
        object.__setattr__(self, "input", tuple(self.input))
        if self.platforms is not None:
            object.__setattr__(self, "platforms", tuple(p.strip().lower() for p in self.platforms))
        object.__setattr__(self, "code_contests_tests", tuple(self.code_contests_tests or ()))
        self._check()

    def _check(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.input:
            raise ValueError("at least one input is required (--input)")
        if self.undated not in UNDATED:
            raise ValueError(f"undated must be one of {UNDATED}, got {self.undated!r}")
        if self.lcb_tests not in {t.value for t in TestSelection}:
            raise ValueError(f"lcb_tests must be one of {[t.value for t in TestSelection]}, got {self.lcb_tests!r}")
        unknown = [t for t in self.code_contests_tests if t not in CC_TEST_SETS]
        if unknown or not self.code_contests_tests:
            raise ValueError(f"code_contests_tests must be a non-empty subset of {tuple(CC_TEST_SETS)}, "
                             f"got {self.code_contests_tests!r}")
        if self.validation not in VALIDATION_MODES:
            raise ValueError(f"validation must be one of {VALIDATION_MODES}, got {self.validation!r}")
        for name, low in (("ngram", 1), ("validation_tries", 1), ("workers", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_tests is not None and self.max_tests < 1:
            raise ValueError(f"max_tests must be >= 1 (or unset), got {self.max_tests}")
        if not self.question_field:
            raise ValueError("a question field is required (--question-field)")
        if self.task == "math" and not self.answer_field:
            raise ValueError("task math needs an answer field (--answer-field)")
        if self.before is not None:
            parse_date(self.before, "before")
            if not self.date_field:
                raise ValueError(f"a date cutoff (--before {self.before}) needs a date field (--date-field)")


def task_config(task: str, input: str | tuple[str, ...], output: str, **options) -> RLPromptConfig:
    """The config of ``task`` with its ``TASK_DEFAULTS``; an option given as None keeps the default,
    one given as "" turns the setting off (None in the config)."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task must be one of {tuple(TASK_DEFAULTS)}, got {task!r}")
    given = {k: (v if v != "" else None) for k, v in options.items() if v is not None}
    return RLPromptConfig(task=task, input=input, output=output, **{**TASK_DEFAULTS[task], **given})


# Where the rows read went: read = the sum of DROPS + written.
DROPS = ("malformed", "other_platform", "file_io", "after_cutoff", "undated_dropped", "no_tests", "duplicates",
         "contaminated", *DROP_REASONS)


@dataclass
class RLPromptStats:
    """read = malformed + other_platform + file_io + after_cutoff + undated_dropped + no_tests + duplicates
    + contaminated + no_python_solution + no_incorrect_solution + correct_failed + incorrect_passed + written;
    the same per source in ``by_source``."""

    read: int = 0
    malformed: int = 0  # includes rows whose id repeats a written row's
    other_platform: int = 0  # code rows of a judge not in `platforms`
    file_io: int = 0  # code rows whose program must read or write named files
    after_cutoff: int = 0  # dated on or after `before`
    undated_dropped: int = 0
    no_tests: int = 0
    duplicates: int = 0  # same normalized question as an earlier kept row
    contaminated: int = 0
    no_python_solution: int = 0  # validation drops (nemo_ext.data.code_validation)
    no_incorrect_solution: int = 0
    correct_failed: int = 0
    incorrect_passed: int = 0
    written: int = 0
    undated_kept: int = 0  # undated rows let through the date step (later steps may still drop them)
    validated: int = 0  # rows that passed validation (later steps may still drop them)
    not_validated: int = 0  # rows that reached validation without solutions to check (or with it off)
    contaminated_by_benchmark: dict[str, int] = field(default_factory=dict)  # a row counts for each it hits
    overlap_examples: dict[str, list[dict]] = field(default_factory=dict)
    malformed_examples: list[str] = field(default_factory=list)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    validation_examples: dict[str, list[dict]] = field(default_factory=dict)
    isolation: set[str] = field(default_factory=set)  # the sandbox isolation the validation ran under

    def add(self, name: str, source: str, n: int = 1, total: bool = True) -> None:
        """Count ``n`` rows of ``source`` under ``name`` (``total``: in the run's count as well)."""
        if total:
            setattr(self, name, getattr(self, name) + n)
        per = self.by_source.setdefault(source, {})
        per[name] = per.get(name, 0) + n


@dataclass(frozen=True)
class Kept:
    """A row that passed the steps so far: its location, prompt (id None until assigned), dedup key,
    source (``<schema>/<platform>``, or "math") and, for code, its parsed problem."""

    location: str
    prompt: dict
    key: int
    source: str
    problem: CodeProblem | None = None


def math_prompt(row: Row, cfg: RLPromptConfig) -> dict:
    """``{id, question, answer}`` of a math row (id None until assigned); ``MalformedRowError`` names the key."""
    question = required_text(row, cfg.question_field)
    answer = row.record.get(cfg.answer_field)
    if isinstance(answer, bool) or not isinstance(answer, str | int | float) or not str(answer).strip():
        raise MalformedRowError(f"{row.location}: field {cfg.answer_field!r} is {answer!r:.80}, expected a "
                                "non-empty string or number")
    return {"id": optional_id(row, cfg.id_field), "question": question, "answer": str(answer).strip()}


def parse_row(row: Row, cfg: RLPromptConfig) -> tuple[dict, date | None, CodeProblem | None]:
    """(prompt, date, code problem or None) of a row, or ``MalformedRowError`` starting with its location."""
    if row.error is not None or not isinstance(row.record, dict):
        why = row.error or f"expected a JSON object, got {type(row.record).__name__}"
        raise MalformedRowError(f"{row.location}: {why}")
    if cfg.task == "math":
        return math_prompt(row, cfg), row_date(row, cfg.date_field), None
    problem = read_code_row(row, cfg)
    return problem.prompt, problem.day, problem


def date_verdict(day: date | None, cfg: RLPromptConfig) -> str | None:
    """None to keep the row, else the count it goes to: "after_cutoff", "undated_dropped" (or "undated_kept",
    which keeps it). The cutoff day itself is dropped: kept rows are dated strictly before ``cfg.before``."""
    if cfg.before is None:
        return None
    if day is None:
        return "undated_dropped" if cfg.undated == "drop" else "undated_kept"
    return "after_cutoff" if day >= parse_date(cfg.before, "before") else None


def code_verdict(problem: CodeProblem, cfg: RLPromptConfig) -> str | None:
    """The first of the code-only drops a problem meets: other_platform, file_io; None to keep it."""
    platform = problem.source.split("/", 1)[1]
    if cfg.platforms is not None and platform != UNSPECIFIED and platform not in cfg.platforms:
        return "other_platform"
    return "file_io" if problem.file_io else None


def select(rows: Iterable[Row], cfg: RLPromptConfig, stats: RLPromptStats) -> Iterator[Kept]:
    """The rows that pass parsing, the platform, file and date filters, the test check and dedup; the
    others counted in ``stats``."""
    dedup = PromptDedup()
    for row in rows:
        source = MATH_SOURCE if cfg.task == "math" else source_of(row)
        stats.add("read", source)
        try:
            prompt, day, problem = parse_row(row, cfg)
        except MalformedRowError as e:
            skip_malformed(e, cfg.strict, stats)
            stats.add("malformed", source, total=False)
            continue
        verdict = code_verdict(problem, cfg) if problem is not None else None
        verdict = verdict or date_verdict(day, cfg)
        if verdict == "undated_kept":
            stats.add(verdict, source)
        elif verdict:
            stats.add(verdict, source)
            continue
        if problem is not None and not prompt["tests"]:
            stats.add("no_tests", source)
            continue
        key = text_hash64(normalize_prompt(prompt["question"]))
        if reason := dedup.admit(key, ""):
            stats.add(reason, source)
            continue
        yield Kept(row.location, prompt, key, source, problem)


def decontaminate(kept: Iterable[Kept], index, stats: RLPromptStats) -> Iterator[Kept]:
    """The rows whose question shares no n-gram with a benchmark problem (checked ``CHUNK_ROWS`` at a time)."""
    kept = iter(kept)
    while chunk := list(islice(kept, CHUNK_ROWS)):
        rows = [(i, k.location, k.prompt["question"], "", k.key) for i, k in enumerate(chunk)]
        flags = mark_contaminated(index, rows, "prompt", stats)
        for k, bad in zip(chunk, flags, strict=True):
            if bad:
                stats.add("contaminated", k.source)
            else:
                yield k


def validated(kept: Iterable[Kept], cfg: RLPromptConfig, stats: RLPromptStats, pools: PoolSource) -> Iterator[Kept]:
    """The code rows that pass test validation (``CHUNK_ROWS`` at a time); rows whose source ships no
    solutions pass unchecked (``not_validated``)."""
    kept = iter(kept)
    while chunk := list(islice(kept, CHUNK_ROWS)):
        problems = [k.problem for k in chunk]
        checked = cfg.validation != "off" and any(p is not None and p.validated for p in problems)
        outcomes = validate(problems, pools.get(), cfg.validation, cfg.validation_tries) if checked else None
        for i, k in enumerate(chunk):
            outcome = outcomes[i] if outcomes else None
            if outcome is None or cfg.validation == "off" or not k.problem.validated:
                stats.add("not_validated", k.source)
                yield k
                continue
            stats.isolation.update([outcome.isolation] if outcome.isolation else [])
            if outcome.reason is None:
                stats.add("validated", k.source)
                yield k
                continue
            stats.add(outcome.reason, k.source)
            examples = stats.validation_examples.setdefault(outcome.reason, [])
            if len(examples) < MAX_VALIDATION_EXAMPLES:
                examples.append({"row": k.location, "id": k.prompt["id"], "verdicts": outcome.verdicts})


class PoolSource:
    """The validation's reward pool, started on first use (a math run or one without solutions
    starts none), or the one a caller passes; ``close`` stops only a pool started here."""

    def __init__(self, cfg: RLPromptConfig, pool=None):
        self.cfg, self.pool, self.owned = cfg, pool, False

    def get(self):
        if self.pool is None:
            from nemo_ext.rewards import RewardPool

            self.pool = RewardPool(self.cfg.workers or os.cpu_count() or 1, code_timeout_s=self.cfg.test_timeout_s)
            self.owned = True
        return self.pool

    def close(self) -> None:
        if self.owned:
            self.pool.close()


def assign_ids(clean: Iterable[Kept], cfg: RLPromptConfig, stats: RLPromptStats) -> Iterator[dict]:
    """The prompts with ids (the dedup key's 16 hex digits where the row gave none); a repeated id is malformed."""
    first: dict[str, str] = {}
    for k in clean:
        prompt_id = k.prompt["id"] if k.prompt["id"] is not None else f"{k.key:016x}"
        if prompt_id in first:
            error = MalformedRowError(f"{k.location}: duplicate id {prompt_id!r} (first at {first[prompt_id]})")
            skip_malformed(error, cfg.strict, stats)
            stats.add("malformed", k.source, total=False)
            continue
        first[prompt_id] = k.location
        stats.add("written", k.source)
        yield {**k.prompt, "id": prompt_id}


def _columns(cfg: RLPromptConfig) -> list[str]:
    names = [cfg.question_field, cfg.answer_field, cfg.id_field, cfg.date_field]
    if cfg.task == "code":
        names += ["tests", "starter_code", "platform", "solutions", "incorrect_solutions", *CC_COLUMNS,
                  *(v for v in asdict(LCB_FIELDS).values() if isinstance(v, str))]
    return list(dict.fromkeys(n for n in names if n))


def open_inputs(cfg: RLPromptConfig) -> tuple[Iterator[Row], int | None]:
    """The rows of every input in order, and their total count when every input knows its own."""
    opened = [open_rows(source, _columns(cfg), cfg.split) for source in cfg.input]
    totals = [total for _, total in opened]
    return chain.from_iterable(rows for rows, _ in opened), None if None in totals else sum(totals)


def build_prompts(cfg: RLPromptConfig, progress: bool = True, pool=None) -> dict:
    """Run the conversion of ``cfg``: writes ``cfg.output`` and ``<output>.metadata.json`` atomically
    (the data first), holding the output's lock (``OutputLock``); returns the metadata. Raises ValueError
    when no prompt is left. ``pool``: a ``RewardPool`` for the test validation (default: one started
    when first needed, then closed)."""
    with OutputLock(cfg.output):
        return _build_prompts(cfg, progress, pool)


def _build_prompts(cfg: RLPromptConfig, progress: bool, pool) -> dict:
    for source in cfg.input:
        if Path(cfg.output).resolve() == Path(source).resolve():
            raise ValueError(f"--output {cfg.output} would replace the input")
    index = benchmark_index(cfg.benchmarks, cfg.ngram)
    if not index.names:
        log.warning("no benchmarks given: nothing is decontaminated")
    stats = RLPromptStats(contaminated_by_benchmark=dict.fromkeys(index.names, 0),
                          overlap_examples={name: [] for name in index.names})
    rows, total = open_inputs(cfg)
    digest = hashlib.sha256()

    def write(tmp: str) -> None:
        with ExitStack() as stack:
            pools = PoolSource(cfg, pool)
            stack.callback(pools.close)
            bar = stack.enter_context(tqdm(rows, total=total, unit="row", desc=f"{cfg.task} prompts",
                                           disable=not progress))
            f = stack.enter_context(open(tmp, "w", encoding="utf-8"))
            kept = decontaminate(select(bar, cfg, stats), index, stats)
            if cfg.task == "code":
                kept = validated(kept, cfg, stats, pools)
            for prompt in assign_ids(kept, cfg, stats):
                line = json.dumps(prompt, ensure_ascii=False) + "\n"
                f.write(line)
                digest.update(line.encode("utf-8"))
            if not stats.written:  # raised inside: the temporary file is removed, the old output kept
                raise ValueError(f"{', '.join(cfg.input)}: no prompt left to write; counts: {_counts(stats)}")
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


def counts_by_source(stats: RLPromptStats) -> dict[str, dict[str, int]]:
    """Per source (sorted), every count of ``_counts`` (zeros included)."""
    keys = _counts(stats)
    return {source: {k: per.get(k, 0) for k in keys} for source, per in sorted(stats.by_source.items())}


def metadata(cfg: RLPromptConfig, stats: RLPromptStats, index, sha256: str) -> dict:
    """``<output>.metadata.json`` (docs/rl.md, "RL prompts", lists its keys)."""
    inputs = tuple(os.path.abspath(s) if os.path.exists(s) else s for s in cfg.input)
    meta = {
        "format": FORMAT,
        "output": os.path.abspath(cfg.output),
        "sha256": sha256,
        "settings": asdict(replace(cfg, input=inputs)),
        "normalization": NORMALIZATION,
        "counts": _counts(stats),
        "counts_by_source": counts_by_source(stats),
        "benchmarks": benchmark_report(index, stats),
        "malformed_examples": stats.malformed_examples,
    }
    if cfg.task == "code":
        meta["validation"] = {"mode": cfg.validation, "tries": cfg.validation_tries,
                              "test_timeout_s": cfg.test_timeout_s, "isolation": sorted(stats.isolation),
                              "examples": stats.validation_examples}
    return meta
