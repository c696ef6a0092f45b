"""Write the embedded default's synthetic arithmetic task to files, in the formats the real data has.

    python data_prep/synthetic.py --output data/synthetic
    python data_prep/pack.py --input data/synthetic/sft_train.jsonl --output data/synthetic/packed \
        --tokenizer TOKENIZER --bin-size 1024 --prompt-field question --response-field output --task-field task

Writes ``sft_train.jsonl`` (``{question, output, answer, task}``: a prompt and a teacher response with
its reasoning in ``<think>``, like nvidia/AceReason-1.1-SFT rows), ``heldout.jsonl`` (test-split
problems, never a train question) and ``rl_math.jsonl`` (RL prompts ``{id, question, answer}``, the
format of nemo_ext/rl/prompts.py). ``recipes/sft.py`` and ``recipes/rl.py`` build the same data
themselves when no data is configured; this script is for looking at it, or for running the real
data path (curate, pack, RL prompts from a file) on it. Defaults: recipes/conf/sft/tiny.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nemo_ext.config.schema import HeldoutConfig, SyntheticDataConfig
from nemo_ext.data.synthetic import write_split
from nemo_ext.rl.prompts import DEFAULT_SYNTHETIC_PROMPTS


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticDataConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for the three JSONL files")
    p.add_argument("--num-train", type=int, default=defaults.num_train, help="SFT samples")
    p.add_argument("--num-eval", type=int, default=HeldoutConfig().num_problems, help="held-out problems")
    p.add_argument("--num-rl", type=int, default=DEFAULT_SYNTHETIC_PROMPTS, help="RL prompts (train split)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    a = p.parse_args(argv)
    for name in ("num_train", "num_eval", "num_rl"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        p.error(f"--output {out} exists and is not a directory")
    try:
        files = {
            "sft_train": write_split(out / "sft_train.jsonl", a.num_train, a.seed, "train"),
            "heldout": write_split(out / "heldout.jsonl", a.num_eval, a.seed, "test"),
            "rl_math": write_split(out / "rl_math.jsonl", a.num_rl, a.seed, "train", rl_format=True),
        }
    except OSError as e:  # an unwritable --output (a parent that is a file, no permission, a full disk)
        print(f"synthetic: error: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({name: str(path) for name, path in files.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
