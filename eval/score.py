"""Score generated responses: math answers or code against tests, with the paper's rewards.

    python eval/score.py --task math --input gens.jsonl --output scored.jsonl [--workers 4]

Rows carry ``response`` plus ``answer`` (math) or ``tests`` (code; format in docs/rewards.md). The
output keeps every input field and adds ``reward``, ``verdict``, ``extracted``, ``seconds``. A rerun
resumes where the output stops. Malformed rows are reported on stderr with their line number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nemo_ext.rewards.files import score_file  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("math", "code"))
    parser.add_argument("--input", required=True, type=Path, help="JSONL of rows to score")
    parser.add_argument("--output", required=True, type=Path, help="JSONL written (appended) row by row")
    parser.add_argument("--workers", type=int, default=4, help="scoring processes (default 4)")
    args = parser.parse_args(argv)
    try:
        summary = score_file(args.task, args.input, args.output, workers=args.workers)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"scored {summary.scored} rows (mean reward {summary.mean_reward:.4f}), "
          f"{summary.resumed} already in {args.output}, {summary.malformed} malformed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
