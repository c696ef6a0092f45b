"""Write the RL prompt JSONL of a stage's ``data`` (recipes/conf/rl/*.yaml) from a math or code source.

    python data_prep/rl_prompts.py --task math --input nvidia/AceReason-Math \\
        --output data/rl/acereason_math.jsonl --benchmark aime24 --benchmark-file aime25.jsonl
    python data_prep/rl_prompts.py --task code --input code_rows.jsonl --output data/rl/acereason_code.jsonl \\
        --benchmark lcb_v5 --benchmark lcb_v6 [--before 2024-08-01 --date-field contest_date]

Input: a JSONL or Parquet file, a directory of them, a ``datasets.save_to_disk`` directory, or a
Hugging Face hub name (as data_prep/curate.py). Output: the JSONL (format: nemo_ext/rl/prompts.py)
and ``<output>.metadata.json`` (every count, per-benchmark drops), both replaced atomically.
Defaults per task (nemo_ext.prep.rl_prompts.TASK_DEFAULTS) and details: docs/rl.md, "RL prompts".
"""

from __future__ import annotations

import argparse
import sys

from nemo_ext.evaluation.registry import TestSelection
from nemo_ext.prep.cli import add_benchmark_args, benchmark_sources, print_summary, run_job
from nemo_ext.prep.rl_prompts import TASK_DEFAULTS, UNDATED, RLPromptConfig, build_prompts, metadata_path, task_config


def _defaults(key: str) -> str:
    return "; ".join(f"{task}: {values[key]}" for task, values in TASK_DEFAULTS.items())


def parse_args(argv: list[str] | None = None) -> tuple[RLPromptConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=tuple(TASK_DEFAULTS))
    p.add_argument("--input", required=True, help="JSONL/Parquet file or dir, save_to_disk dir, or hub name")
    p.add_argument("--output", required=True, help="the JSONL to write (replaced atomically)")
    # default None = the task's default (TASK_DEFAULTS, shown as "math: ...; code: ..."); '' = off
    p.add_argument("--question-field", default=None, help=f"{_defaults('question_field')} (project-format rows)")
    p.add_argument("--answer-field", default=None, help=_defaults("answer_field"))
    p.add_argument("--id-field", default=None, help=f"{_defaults('id_field')}; '' = hex hash of the question")
    p.add_argument("--date-field", default=None, help=_defaults("date_field"))
    p.add_argument("--before", default=None, help=f"keep rows dated strictly before this ISO date "
                                                  f"({_defaults('before')}); '' = no date filter")
    p.add_argument("--undated", choices=UNDATED, default=None, help="rows without a date, under --before (drop)")
    p.add_argument("--lcb-tests", choices=[t.value for t in TestSelection], default=None,
                   help="tests taken from LiveCodeBench-style rows (public_private)")
    p.add_argument("--ngram", type=int, default=None, help=f"words per n-gram ({_defaults('ngram')})")
    add_benchmark_args(p)
    p.add_argument("--split", default="train", help="split of a datasets source")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = task_config(
        a.task, a.input, a.output, question_field=a.question_field, answer_field=a.answer_field,
        id_field=a.id_field, date_field=a.date_field, before=a.before, ngram=a.ngram, undated=a.undated,
        lcb_tests=a.lcb_tests, benchmarks=benchmark_sources(a), split=a.split, strict=a.strict,
    )  # fmt: skip
    return cfg, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    result = run_job("rl_prompts", argv, parse_args, build_prompts)
    if result is None:
        return 1
    cfg, meta = result
    print_summary(meta, output=cfg.output, metadata=metadata_path(cfg.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
