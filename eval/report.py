"""Render the results table (paper layout, published reference rows) and chart of evaluation runs.

    python eval/report.py RUN_DIR [RUN_DIR ...] [--compare] [--out DIR] [--published eval/published.yaml]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nemo_ext.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
