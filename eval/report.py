"""Render the results table (paper layout, published reference rows) and chart of evaluation runs.

    python eval/report.py RUN_DIR [RUN_DIR ...] [--compare] [--out DIR] [--published eval/published.yaml]
"""

import sys

from nemo_ext.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
