"""What the data_prep command lines share: run a job with its log lines kept clear of the progress
bar, and turn a bad input into one ``<name>: error: ...`` line and exit status 1, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from nemo_ext.data.sources import MalformedRowError

INPUT_ERRORS = (MalformedRowError, ValueError, OSError, KeyError, RuntimeError)


def run_job(name: str, argv: list[str] | None, parse_args: Callable, job: Callable) -> tuple[object, dict] | None:
    """``cfg, progress = parse_args(argv)``, then ``job(cfg, progress=progress)``.

    Returns (cfg, the job's metadata), or None after printing the error of a bad input to stderr.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg, progress = parse_args(argv)
        with logging_redirect_tqdm():
            return cfg, job(cfg, progress=progress)
    except INPUT_ERRORS as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return None
