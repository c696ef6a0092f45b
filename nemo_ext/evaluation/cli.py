"""Commands behind ``eval/run_benchmarks.sh`` and the thin ``eval/*.py`` scripts.

    python -m nemo_ext.evaluation.cli generate   CHECKPOINT [BENCHMARK ...] [key=value ...]
    python -m nemo_ext.evaluation.cli score      CHECKPOINT [BENCHMARK ...] [key=value ...]
    python -m nemo_ext.evaluation.cli output-dir CHECKPOINT [BENCHMARK ...] [key=value ...]
    python -m nemo_ext.evaluation.cli report RUN_DIR [RUN_DIR ...] [--compare] [--out DIR] [--published YAML]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from nemo_ext.evaluation import report, runner
from nemo_ext.evaluation.config import DEFAULT_PUBLISHED, DEFAULT_REGISTRY, check_checkpoint, parse_args
from nemo_ext.evaluation.preflight import check_eval_inputs
from nemo_ext.evaluation.registry import load_registry
from nemo_ext.output_lock import OutputLock


@contextlib.contextmanager
def _runs(argv: list[str], model: bool):
    """The run's config and its benchmark runs, after the preflight (``model``: of the checkpoint too),
    while this process holds the lock of its output_dir."""
    cfg, registry_overrides = parse_args(argv)
    check_checkpoint(cfg.checkpoint)
    specs = check_eval_inputs(cfg, registry_overrides, model)
    with OutputLock(cfg.output_dir):
        yield cfg, runner.prepare(cfg, specs)


def generate(argv: list[str]) -> None:
    with _runs(argv, model=True) as (cfg, runs):
        count = runner.generate_missing(runs, cfg)
    print(f"generated {count} samples into {cfg.output_dir}")


def score(argv: list[str]) -> None:
    from nemo_ext.rewards import RewardPool

    with _runs(argv, model=False) as (cfg, runs):
        with RewardPool(cfg.reward_workers or os.cpu_count() or 1) as pool:
            runner.score_missing(runs, pool)
        for run in runs:
            m = runner.benchmark_metrics(run, cfg.model_name)["metrics"]
            avg = m["avg"]
            print(f"{run.name}: avg@{avg['k']} {100 * avg['mean']:.1f} ± {100 * avg['se']:.1f} (se) over "
                  f"{m['num_problems']} problems, truncated {100 * m['truncation_rate']:.1f}%")


def report_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="eval/report.py", description="Results table and chart.")
    parser.add_argument("run_dirs", nargs="+", help="output directories of eval/run_benchmarks.sh")
    parser.add_argument("--compare", action="store_true", help="compare two runs (second minus first)")
    parser.add_argument("--out", help="where report.md and report.png go (default: the first run dir)")
    parser.add_argument("--published", default=str(DEFAULT_PUBLISHED), help="published numbers (YAML)")
    parser.add_argument("--benchmarks-file", default=str(DEFAULT_REGISTRY), help="registry (column order)")
    args = parser.parse_args(argv)
    runs = [report.load_run(d) for d in args.run_dirs]
    published = report.load_published(args.published)
    registry = load_registry(args.benchmarks_file)
    titles = {name: spec.title for name, spec in registry.benchmarks.items()}
    out = Path(args.out or args.run_dirs[0])
    columns = report.columns_of(runs, published, list(registry.benchmarks))
    report.plot(runs, published, columns, titles, out / "report.png")
    text = report.render_report(runs, published, list(registry.benchmarks), titles, chart="report.png",
                                compare_pair=args.compare)
    from nemo_ext.io import atomic_write_text

    atomic_write_text(out / "report.md", text)
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")


def output_dir(argv: list[str]) -> None:
    cfg, _ = parse_args(argv)
    check_checkpoint(cfg.checkpoint)
    print(cfg.output_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"generate": generate, "score": score, "report": report_main, "output-dir": output_dir}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[0]](argv[1:])
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        # Bad input is reported as one readable message (which names the file, key or row), not a traceback.
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
