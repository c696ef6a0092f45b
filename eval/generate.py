"""Generate samples for an evaluation run (resumable): see docs/evaluation.md.

    python eval/generate.py CHECKPOINT [BENCHMARK ...] [key=value ...]
"""

import sys

from nemo_ext.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
