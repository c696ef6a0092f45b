"""The files a stage's job leaves in its state directory (``<output_root>/launch/<stage>/``).

``DONE`` is written, atomically (``nemo_ext.io``), as the job's last command, once every srun task
has exited 0: its presence is what makes a stage complete, so re-running the launcher skips it.
``FAILED`` is written by the job's exit trap on a non-zero exit (and removed by a later success).
``JOB`` holds the id of the stage's latest submission. All three are small JSON files.

    python -m nemo_ext.launch.marker done|failed STATE_DIR --job ID [--code RC]
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

from nemo_ext.io import atomic_write_json

DONE, FAILED, JOB = "DONE", "FAILED", "JOB"


def write_marker(state_dir: str | Path, kind: str, job: str, code: int | None = None) -> Path:
    """Write ``state_dir/<kind>`` (DONE, FAILED or JOB) atomically; returns its path."""
    if kind not in (DONE, FAILED, JOB):
        raise ValueError(f"marker kind must be one of {DONE}, {FAILED}, {JOB}; got {kind!r}")
    record = {"job": str(job), "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if code is not None:
        record["exit_code"] = code
    path = Path(state_dir) / kind
    atomic_write_json(path, record)
    if kind == DONE:
        (Path(state_dir) / FAILED).unlink(missing_ok=True)
    return path


def read_marker(state_dir: str | Path, kind: str) -> dict | None:
    """The marker's record, or None when absent (or unreadable: a marker is written whole or not at all)."""
    try:
        return json.loads((Path(state_dir) / kind).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a stage's DONE or FAILED marker (run by the sbatch script).")
    p.add_argument("kind", choices=["done", "failed"])
    p.add_argument("state_dir")
    p.add_argument("--job", required=True)
    p.add_argument("--code", type=int, default=None)
    a = p.parse_args(argv)
    print(f"marker {write_marker(a.state_dir, a.kind.upper(), a.job, a.code)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
