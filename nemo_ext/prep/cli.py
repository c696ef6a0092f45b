"""What the data_prep command lines share: run a job with its log lines kept clear of the progress
bar, and turn a bad input into one ``<name>: error: ...`` line and exit status 1, not a traceback; the
benchmark options of the jobs that decontaminate, and their one-line JSON summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from nemo_ext.data.sources import MalformedRowError
from nemo_ext.evaluation.config import DEFAULT_REGISTRY
from nemo_ext.prep.curate import BenchmarkSources

INPUT_ERRORS = (MalformedRowError, ValueError, OSError, KeyError, RuntimeError)


def run_job(name: str, argv: list[str] | None, parse_args: Callable, job: Callable) -> tuple[object, dict] | None:
    """``cfg, progress = parse_args(argv)``, then ``job(cfg, progress=progress)``.

    Returns (cfg, the job's metadata), or None after printing the error of a bad input to stderr.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg, progress = parse_args(argv)
        with logging_redirect_tqdm():
            return cfg, job(cfg, progress=progress)
    except INPUT_ERRORS as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return None


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    """The options that name the benchmarks to decontaminate against (read back by ``benchmark_sources``)."""
    p.add_argument("--benchmark", action="append", default=[], help="registry entry (repeat)")
    p.add_argument("--benchmarks-yaml", default=str(DEFAULT_REGISTRY), help="the benchmark registry")
    p.add_argument("--benchmark-override", action="append", default=[],
                   help="registry dotlist, e.g. benchmarks.aime24.source.path=/data/aime24.jsonl (repeat)")
    p.add_argument("--benchmark-file", action="append", default=[], help="JSONL/Parquet of problems (repeat)")
    p.add_argument("--benchmark-field", default="problem", help="the problem text's field in --benchmark-file")


def benchmark_sources(a: argparse.Namespace) -> BenchmarkSources:
    return BenchmarkSources(names=tuple(a.benchmark), registry=a.benchmarks_yaml,
                            overrides=tuple(a.benchmark_override), files=tuple(a.benchmark_file),
                            field=a.benchmark_field)


def print_summary(meta: dict, **extra) -> None:
    """One JSON line on stdout: the job's counts, the rows each benchmark contaminated, and ``extra``."""
    contaminated = {name: b["contaminated"] for name, b in meta["benchmarks"].items()}
    print(json.dumps({"counts": meta["counts"], "contaminated_by_benchmark": contaminated, **extra}))
