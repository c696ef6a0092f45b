"""Generate samples for an evaluation run (resumable): see docs/evaluation.md.

    python eval/generate.py CHECKPOINT [BENCHMARK ...] [key=value ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nemo_ext.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
