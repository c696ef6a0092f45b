"""The benchmark registry: the typed schema of ``eval/benchmarks.yaml``, and prompt templates.

Each entry says where the problems come from (a ``datasets`` hub id, or a local JSONL / Parquet file
or directory that overrides it), which columns hold what, the task (math or code), the prompt
template, how many samples per problem and how to sample them. The YAML is merged into the dataclasses
below by OmegaConf, so an unknown key, a missing one or an ill-typed value is an error that names the
file and the key. Defaults follow AceReason-Nemotron 1.1's evaluation protocol (arXiv 2506.13284;
/work/shared/PAPER.md, "Evaluation protocol"): temperature 0.6, top_p 0.95, 32,768 new tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nemo_ext.data import prompts


class Task(StrEnum):
    math = "math"  # reference: the answer string, scored by the math reward
    code = "code"  # reference: the test list, scored by the code reward


class LoaderKind(StrEnum):
    rows = "rows"  # one problem per row, columns named in `fields`
    livecodebench = "livecodebench"  # code_generation_lite rows: decoded tests, contest-date window
    synthetic = "synthetic"  # the embedded task's held-out set (nemo_ext.data.synthetic)


class TestSelection(StrEnum):
    __test__ = False  # not a pytest class
    private = "private"  # what the AceReason toolkit grades (docs/evaluation.md says why we follow it)
    public_private = "public_private"  # LiveCodeBench's own grading


@dataclass
class SourceSpec:
    hub: str | None = None  # `datasets` hub id
    config: str | None = None  # hub config name
    split: str = "test"
    revision: str | None = None
    path: str | None = None  # local .jsonl / .parquet file, or a directory of them; overrides `hub`
    num_problems: int = 200  # synthetic loader only
    seed: int = 0  # synthetic loader only


@dataclass
class FieldsSpec:
    """Column names in the source rows; null = not used (an `id` of null numbers rows from 0)."""

    id: str | None = None
    question: str = "problem"
    answer: str | None = "answer"
    starter_code: str | None = None
    public_tests: str | None = None
    private_tests: str | None = None
    metadata: str | None = None
    date: str | None = None


@dataclass
class WindowSpec:
    """Half-open date window [start, end) on ISO dates ("2024-08-01"); null = unbounded."""

    start: str | None = None
    end: str | None = None


@dataclass
class SamplingSpec:
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768


@dataclass
class BenchmarkSpec:
    task: Task = MISSING
    title: str = ""  # column header in reports; defaults to the entry's name
    loader: LoaderKind = LoaderKind.rows
    source: SourceSpec = field(default_factory=SourceSpec)
    fields: FieldsSpec = field(default_factory=FieldsSpec)
    template: str = "acereason_1.1"
    samples: int = 1
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    contest_dates: WindowSpec = field(default_factory=WindowSpec)  # livecodebench loader only
    tests: TestSelection = TestSelection.private  # livecodebench loader only


@dataclass
class Registry:
    """The whole YAML: the entries, and which of them run when none is named."""

    default_gpu: list[str] = field(default_factory=list)
    default_cpu: list[str] = field(default_factory=list)
    benchmarks: dict[str, BenchmarkSpec] = field(default_factory=dict)


def _prompt_acereason_11(problem: dict) -> str:
    return prompts.render_prompt(problem["question"], problem["task"], problem.get("starter_code", ""))


# name -> function(problem dict with question, task, starter_code) -> full prompt text.
TEMPLATES: dict[str, Callable[[dict], str]] = {"acereason_1.1": _prompt_acereason_11}


def render(template: str, problem: dict) -> str:
    """The prompt text of ``problem`` under the registered ``template``."""
    if template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {template!r}; registered: {sorted(TEMPLATES)}")
    return TEMPLATES[template](problem)


def config_error(where: str, err: OmegaConfBaseException) -> ValueError:
    """A one-line error naming the file (or "command line") and the offending key."""
    key = getattr(err, "full_key", "") or "?"
    message = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) and err.object_type is not None:
        allowed = ", ".join(f.name for f in fields(err.object_type))
        message += f" (allowed keys: {allowed})"
    return ValueError(f"{where}: key {key!r}: {message}")


def load_registry(path: str | Path, overrides: list[str] | None = None) -> Registry:
    """The registry YAML, validated, with ``overrides`` (a dotlist such as
    ``["benchmarks.aime24.source.path=/x.jsonl"]``) merged on top; titles default to entry names."""
    path = Path(path)
    try:
        raw = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(Registry), raw)
    except OmegaConfBaseException as err:
        raise config_error(str(path), err) from err
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: benchmark registry not found") from err
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides or []))
        registry: Registry = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise config_error(f"{path} + command line", err) from err
    for name, spec in registry.benchmarks.items():
        where = f"{path}: benchmarks.{name}"
        spec.title = spec.title or name
        if spec.template not in TEMPLATES:
            raise ValueError(f"{where}.template: unknown template {spec.template!r}; "
                             f"registered: {sorted(TEMPLATES)}")
        if spec.samples < 1 or spec.sampling.max_new_tokens < 1:
            raise ValueError(f"{where}: samples and sampling.max_new_tokens must be >= 1")
    for key in ("default_gpu", "default_cpu"):
        unknown = [n for n in getattr(registry, key) if n not in registry.benchmarks]
        if unknown:
            raise ValueError(f"{path}: {key} names unknown benchmark(s) {unknown}")
    return registry
