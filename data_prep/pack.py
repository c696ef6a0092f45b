"""Tokenize chat samples and pack them into Parquet shards of fixed-size bins for SFT.

    python data_prep/pack.py --input sft.jsonl --output data/packed --tokenizer /models/qwen --bin-size 32768

Input: a JSONL or Parquet file, a directory of them, a ``datasets.save_to_disk`` directory, or a
Hugging Face hub name. Rerun the same command to resume an interrupted run. Format: docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from nemo_ext.data.sources import ChatFields
from nemo_ext.prep.cli import run_job
from nemo_ext.prep.pack_job import OVERLONG_POLICIES, PackConfig, pack_dataset


def parse_args(argv: list[str] | None = None) -> tuple[PackConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSONL/Parquet file or dir, save_to_disk dir, or hub name")
    p.add_argument("--output", required=True, help="output directory (rerun to resume)")
    p.add_argument("--tokenizer", required=True, help="tokenizer path for transformers.AutoTokenizer")
    p.add_argument("--bin-size", type=int, required=True, help="tokens per packed bin")
    p.add_argument("--prompt-field", default="input")
    p.add_argument("--response-field", default="output")
    p.add_argument("--task-field", default="category", help="holds 'math' or 'code'")
    p.add_argument("--default-task", default="math", help="for rows without it ('' = required)")
    p.add_argument("--split", default="train", help="split of a datasets source")
    p.add_argument("--overlong", choices=OVERLONG_POLICIES, default="truncate")
    p.add_argument("--bins-per-shard", type=int, default=1024)
    p.add_argument("--buffer-samples", type=int, default=10_000, help="rows packed together (memory bound)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    fields = ChatFields(a.prompt_field, a.response_field, a.task_field, a.default_task or None)
    cfg = PackConfig(
        input=a.input, output=a.output, tokenizer=a.tokenizer, bin_size=a.bin_size, fields=fields,
        split=a.split, overlong=a.overlong, bins_per_shard=a.bins_per_shard,
        buffer_samples=a.buffer_samples, strict=a.strict,
    )  # fmt: skip
    return cfg, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    result = run_job("pack", argv, parse_args, pack_dataset)
    if result is None:
        return 1
    _, meta = result
    print(json.dumps({"counts": meta["counts"], "packing_efficiency": round(meta["packing_efficiency"], 5)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
