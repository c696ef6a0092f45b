"""Write the RL prompt JSONL of a stage's ``data`` (recipes/conf/rl/*.yaml) from math or code sources.

    python data_prep/rl_prompts.py --task math --input nvidia/AceReason-Math \\
        --output data/rl/acereason_math.jsonl --benchmark aime24 --benchmark-file aime25.jsonl
    python data_prep/rl_prompts.py --task code --input deepmind/code_contests --input lcb_shards/ \\
        --output data/rl/acereason_code.jsonl --benchmark lcb_v5 --benchmark lcb_v6

Input (repeat --input for several, read in order): a JSONL or Parquet file, a directory of them, a
``datasets.save_to_disk`` directory, or a Hugging Face hub name (as data_prep/curate.py). Code rows may
be the project's, LiveCodeBench's (code_generation_lite) or DeepMind's CodeContests, told apart per row.
Output: the JSONL (format: nemo_ext/rl/prompts.py) and ``<output>.metadata.json`` (every count, per
source and per filter, per-benchmark drops, validation examples), both replaced atomically.
Defaults per task (nemo_ext.prep.rl_prompts.TASK_DEFAULTS) and details: docs/rl.md, "RL prompts".
"""

from __future__ import annotations

import argparse
import sys

from nemo_ext.evaluation.registry import TestSelection
from nemo_ext.prep.cli import add_benchmark_args, benchmark_sources, print_summary, run_job
from nemo_ext.prep.code_sources import CC_TEST_SETS
from nemo_ext.prep.code_validation import VALIDATION_MODES
from nemo_ext.prep.rl_prompts import TASK_DEFAULTS, UNDATED, RLPromptConfig, build_prompts, metadata_path, task_config


def _defaults(key: str) -> str:
    def shown(value) -> str:
        return ",".join(value) if isinstance(value, tuple) else str(value)

    return "; ".join(f"{task}: {shown(values[key])}" for task, values in TASK_DEFAULTS.items())


def _names(text: str | None) -> tuple[str, ...] | str | None:
    """A comma-separated list as a tuple ('' stays '': the setting off; None: the task's default)."""
    if not text:
        return text
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _code_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platforms", default=None, help=f"code: judges to keep, comma-separated "
                                                     f"({_defaults('platforms')}); '' = all; rows naming none pass")
    p.add_argument("--lcb-tests", choices=[t.value for t in TestSelection], default=None,
                   help="tests taken from LiveCodeBench-style rows (public_private)")
    p.add_argument("--code-contests-tests", default=None,
                   help=f"CodeContests test sets, comma-separated ({','.join(CC_TEST_SETS)})")
    p.add_argument("--max-tests", type=int, default=None, help="code: keep a problem's first N tests (all)")
    p.add_argument("--validation", choices=VALIDATION_MODES, default=None,
                   help=f"code problems shipping solutions ({_defaults('validation')})")
    p.add_argument("--validation-tries", type=int, default=None, help="solutions tried per side (3)")
    p.add_argument("--workers", type=int, default=None, help="sandbox workers of the validation (0 = CPU cores)")
    p.add_argument("--test-timeout", type=float, default=None, help="seconds per test in the validation (6)")


def parse_args(argv: list[str] | None = None) -> tuple[RLPromptConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=tuple(TASK_DEFAULTS))
    p.add_argument("--input", required=True, action="append",
                   help="JSONL/Parquet file or dir, save_to_disk dir, or hub name (repeat)")
    p.add_argument("--output", required=True, help="the JSONL to write (replaced atomically)")
    # default None = the task's default (TASK_DEFAULTS, shown as "math: ...; code: ..."); '' = off
    p.add_argument("--question-field", default=None, help=f"{_defaults('question_field')} (project-format rows)")
    p.add_argument("--answer-field", default=None, help=_defaults("answer_field"))
    p.add_argument("--id-field", default=None, help=f"{_defaults('id_field')}; '' = hex hash of the question")
    p.add_argument("--date-field", default=None, help=_defaults("date_field"))
    p.add_argument("--before", default=None, help=f"keep rows dated strictly before this ISO date "
                                                  f"({_defaults('before')}); '' = no date filter")
    p.add_argument("--undated", choices=UNDATED, default=None, help="rows without a date, under --before (drop)")
    _code_args(p)
    p.add_argument("--ngram", type=int, default=None, help=f"words per n-gram ({_defaults('ngram')})")
    add_benchmark_args(p)
    p.add_argument("--split", default="train", help="split of a datasets source")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = task_config(
        a.task, tuple(a.input), a.output, question_field=a.question_field, answer_field=a.answer_field,
        id_field=a.id_field, date_field=a.date_field, before=a.before, ngram=a.ngram, undated=a.undated,
        platforms=_names(a.platforms), lcb_tests=a.lcb_tests, code_contests_tests=_names(a.code_contests_tests),
        max_tests=a.max_tests, validation=a.validation, validation_tries=a.validation_tries, workers=a.workers,
        test_timeout_s=a.test_timeout, benchmarks=benchmark_sources(a), split=a.split, strict=a.strict,
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
