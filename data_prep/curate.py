"""Clean SFT / RL rows: exact prompt dedup, n-gram decontamination against benchmarks, difficulty balancing.

    python data_prep/curate.py --input raw.jsonl --output data/curated --benchmark-file aime24.jsonl \\
        --tokenizer /models/Qwen2.5-Math-7B
    python data_prep/pack.py --input data/curated/data ...

Input: a JSONL or Parquet file, a directory of them, a ``datasets.save_to_disk`` directory, or a
Hugging Face hub name (as data_prep/pack.py). Output: ``<output>/data/part-*.jsonl`` (or .parquet),
``metadata.json`` (every count) and ``length_histogram.png``. Details: docs/data.md, "Curation".
"""

from __future__ import annotations

import argparse
import sys

from nemo_ext.data.curate_balance import DEFAULT_EDGES, DEFAULT_FACTORS
from nemo_ext.data.sources import ChatFields
from nemo_ext.prep.cli import add_benchmark_args, benchmark_sources, print_summary, run_job
from nemo_ext.prep.curate import (
    BALANCE_UNITS,
    DATA_DIR,
    DECONTAMINATE,
    OUTPUT_FORMATS,
    CurateConfig,
    curate,
)


def _numbers(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> tuple[CurateConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSONL/Parquet file or dir, save_to_disk dir, or hub name")
    p.add_argument("--output", required=True, help="output directory (replaced atomically at the end)")
    p.add_argument("--prompt-field", default="input", help="'problem' for RL data")
    p.add_argument("--response-field", default="output", help="'' for prompt-only (RL) data")
    p.add_argument("--task-field", default="category", help="holds 'math' or 'code'")
    p.add_argument("--default-task", default="math", help="for rows without it ('' = required)")
    p.add_argument("--split", default="train", help="split of a datasets source")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl")
    p.add_argument("--rows-per-shard", type=int, default=100_000)
    p.add_argument("--max-responses-per-prompt", type=int, default=None, help="default: keep every one")
    p.add_argument("--ngram", type=int, default=9, help="words per n-gram (paper: 9 SFT, 14 RL code)")
    p.add_argument("--decontaminate", choices=DECONTAMINATE, default="prompt", help="text checked for n-grams")
    add_benchmark_args(p)
    p.add_argument("--tokenizer", default=None, help="tokenizer path for lengths (default: characters / 4)")
    p.add_argument("--length-edges", type=_numbers(int), default=DEFAULT_EDGES, help="e.g. 2048,8192,16384")
    p.add_argument("--level-factors", type=_numbers(float), default=DEFAULT_FACTORS, help="e.g. 0.5,1,1,1")
    p.add_argument("--balance", choices=BALANCE_UNITS, default="prompt", help="unit thinned / resampled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = CurateConfig(
        input=a.input, output=a.output,
        fields=ChatFields(a.prompt_field, a.response_field, a.task_field, a.default_task or None),
        split=a.split, output_format=a.format, rows_per_shard=a.rows_per_shard,
        max_responses_per_prompt=a.max_responses_per_prompt, ngram=a.ngram, decontaminate=a.decontaminate,
        benchmarks=benchmark_sources(a), tokenizer=a.tokenizer, length_edges=a.length_edges,
        level_factors=a.level_factors, balance_unit=a.balance, seed=a.seed, strict=a.strict,
    )  # fmt: skip
    return cfg, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    result = run_job("curate", argv, parse_args, curate)
    if result is None:
        return 1
    cfg, meta = result
    print_summary(meta, pack_input=f"{cfg.output}/{DATA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
