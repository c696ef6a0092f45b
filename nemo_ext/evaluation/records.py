"""Append-only JSONL record files that survive a kill: the generations and scores of a benchmark run.

Each record is one line, keyed by ``(problem_id, sample)``. Writers append whole lines and fsync after
each batch, so a kill can only tear the last line; readers drop such a torn tail (a line without its
newline) and cut the file back to its last complete line, so the next append starts clean. Any other
malformed line, or a key seen twice, is an error naming the file and line: nothing is silently lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

Key = tuple[str, int]


def record_key(record: dict) -> Key:
    return str(record["problem_id"]), int(record["sample"])


def read_records(path: str | Path, repair: bool = True) -> dict[Key, dict]:
    """The records of ``path`` by key, in file order ({} if the file does not exist).

    repair: truncate a torn last line from the file (otherwise it is only ignored).
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    if complete < len(data):
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write",
                       path, len(data) - complete)
        if repair:
            with path.open("r+b") as f:
                f.truncate(complete)
    records: dict[Key, dict] = {}
    for lineno, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = record_key(record)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: not a JSON record with problem_id and sample: {err}") from err
        if key in records:
            raise ValueError(f"{path}:{lineno}: duplicate record for problem {key[0]!r} sample {key[1]}")
        records[key] = record
    return records


class RecordWriter:
    """Appends records to a JSONL file; ``write`` makes a batch durable (flush + fsync) before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        self._file.write(lines)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
