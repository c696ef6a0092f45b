"""Benchmark loaders: source rows (hub or local file) -> problems in one canonical shape.

A problem is the dict of ``nemo_ext.data.problems`` (whose ``problem_from_row`` reads a math row
here, as it reads RL prompt files and held-out sets): ``id`` (str, unique), ``task`` ("math" | "code"),
``question``, ``starter_code`` ("" when none), and its reference: ``answer`` (str) for math, ``tests``
(a list of ``{input, output, testtype}``) and ``func_name`` (str, "" for stdin problems) for code.
``date`` is kept when the entry maps one. Loading never drops a row silently: a row that lacks a mapped
column, or whose tests do not decode, is an error naming the source, the row and the column.
"""

from __future__ import annotations

from pathlib import Path

from nemo_ext.data.problems import ProblemColumns, problem_from_row, synthetic_problems
from nemo_ext.data.sources import jsonl_objects
from nemo_ext.evaluation import livecodebench
from nemo_ext.evaluation.registry import BenchmarkSpec, LoaderKind, Task

LOCAL_SUFFIXES = (".jsonl", ".parquet")


def read_local(path: str | Path) -> list[dict]:
    """Rows of a .jsonl or .parquet file, or of every such file in a directory (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {' or '.join(LOCAL_SUFFIXES)} files in this directory")
        return [row for f in files for row in read_local(f)]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return [row for _, row in jsonl_objects(path)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: expected a {' or '.join(LOCAL_SUFFIXES)} file")


def _read_hub(name: str, spec: BenchmarkSpec) -> list[dict]:
    import datasets

    src = spec.source
    try:
        ds = datasets.load_dataset(src.hub, src.config, split=src.split, revision=src.revision)
    except Exception as err:  # any failure to reach or read the hub ends here, with the way out
        raise RuntimeError(
            f"benchmark {name!r}: cannot load {src.hub!r} (config {src.config}, split {src.split!r}, "
            f"revision {src.revision}) from the Hugging Face hub: {type(err).__name__}: {err}\n"
            f"If this machine is offline, download the data elsewhere and point the entry at a local "
            f"file: set `benchmarks.{name}.source.path: /path/to/rows.jsonl` (or .parquet, or a directory "
            f"of them) in the benchmarks YAML, or pass `benchmarks.{name}.source.path=/path/to/rows.jsonl` "
            f"on the command line."
        ) from err
    return ds.to_list()


def read_rows(name: str, spec: BenchmarkSpec) -> tuple[list[dict], str]:
    """The raw rows of a benchmark and a label of where they came from (for error messages)."""
    if spec.source.path:
        return read_local(spec.source.path), spec.source.path
    if spec.source.hub:
        return _read_hub(name, spec), f"hub:{spec.source.hub}"
    raise ValueError(f"benchmark {name!r}: set `source.path` (local file) or `source.hub` (hub id)")


def _math_problem(row: dict, index: int, spec: BenchmarkSpec, where: str) -> dict:
    f = spec.fields
    if f.answer is None:
        raise ValueError(f"{where}: math benchmarks need `fields.answer`")
    columns = ProblemColumns(id=f.id, question=f.question, answer=f.answer, starter_code=f.starter_code)
    return problem_from_row(row, "math", where, default_id=None if f.id else str(index), columns=columns)


def load_problems(name: str, spec: BenchmarkSpec) -> list[dict]:
    """The problems of benchmark ``name``, in source order, validated, ids unique."""
    if spec.loader is LoaderKind.synthetic:
        problems = synthetic_problems(spec.source.num_problems, spec.source.seed, "test")
    else:
        rows, origin = read_rows(name, spec)
        problems = []
        for i, row in enumerate(rows):
            where = f"{origin} row {i}"
            if spec.loader is LoaderKind.livecodebench:
                problem = livecodebench.problem_from_row(row, spec, where)
                if problem is not None:
                    problems.append(problem)
            elif spec.task is Task.math:
                problems.append(_math_problem(row, i, spec, where))
            else:
                raise ValueError(f"benchmark {name!r}: code benchmarks use `loader: livecodebench`")
        if not problems:
            raise ValueError(f"benchmark {name!r}: no problems in {origin} (check the source and dates)")
    seen: set[str] = set()
    for p in problems:
        if p["id"] in seen:
            raise ValueError(f"benchmark {name!r}: duplicate problem id {p['id']!r} "
                             f"(map `fields.id` to a unique column)")
        seen.add(p["id"])
    return problems
