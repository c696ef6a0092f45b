"""Reading chat samples from JSONL, Parquet or a Hugging Face ``datasets`` source, row by row.

Every row carries its location (``file:line`` for JSONL, ``file row i`` otherwise) so that a bad
row is reported where a person can find it. Rows are streamed: JSONL line by line, Parquet one
record batch at a time (only the needed columns), ``datasets`` through its memory map or its
streaming mode. A run that resumes skips its first rows without parsing them.

A source is one of: a ``.jsonl`` / ``.json`` (JSON Lines) or ``.parquet`` file; a directory
written by ``datasets.save_to_disk``; a directory of ``.parquet`` or ``.jsonl`` files (read in
name order); otherwise a Hugging Face hub dataset name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq

log = logging.getLogger(__name__)

BATCH_ROWS = 1024  # rows per Parquet / datasets batch
SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_MALFORMED_EXAMPLES = 100  # malformed-row messages a job keeps for its metadata.json


class MalformedRowError(ValueError):
    """A row that cannot become a chat sample; the message starts with its location."""


def skip_malformed(error: MalformedRowError, strict: bool, stats) -> None:
    """A job's policy for a malformed row: re-raise under ``strict``; else log it (its location comes
    first), count it in ``stats.malformed`` and keep the first ``MAX_MALFORMED_EXAMPLES`` messages in
    ``stats.malformed_examples``."""
    if strict:
        raise error
    log.warning("skipping malformed row: %s", error)
    stats.malformed += 1
    if len(stats.malformed_examples) < MAX_MALFORMED_EXAMPLES:
        stats.malformed_examples.append(str(error))


def text_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` for each non-blank line of a UTF-8 file, or ``(line number, None,
    why)`` for a line that is not valid UTF-8: one bad line never stops the reading of the others."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield line_no, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(location, object)`` for each non-blank line of a JSON Lines file, ``location`` being
    ``path:line``. Strict: a line that is not a JSON object raises ValueError naming its location
    (the lenient, skip-and-count reading of data jobs is ``open_rows``)."""
    for line_no, line, bad_text in text_lines(path):
        where = f"{path}:{line_no}"
        if bad_text:
            raise ValueError(f"{where}: {bad_text}")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


@dataclass(frozen=True)
class Row:
    """One input row: its location and either its record or why it could not be parsed."""

    location: str
    record: dict | None
    error: str | None = None
    columns: tuple[str, ...] | None = None  # a Parquet file's columns (its records hold only those asked)


@dataclass(frozen=True)
class ChatFields:
    """Which record fields hold the question, the teacher output and the task."""

    prompt: str = "input"
    response: str = "output"
    task: str = "category"
    default_task: str | None = "math"  # used when a record has no task field; None: it must


TASKS = ("math", "code")


def chat_sample(row: Row, fields: ChatFields) -> tuple[str, str, str]:
    """(question, output, task) of a row, or ``MalformedRowError`` naming the row and the key."""
    if row.error is not None:
        raise MalformedRowError(f"{row.location}: {row.error}")
    record = row.record
    if not isinstance(record, dict):
        raise MalformedRowError(f"{row.location}: expected a JSON object, got {type(record).__name__}")

    def text(key: str) -> str:
        if key not in record:
            present = "columns of the file" if row.columns is not None else "fields present"
            raise MalformedRowError(
                f"{row.location}: missing field {key!r} (expected a string; {present}: "
                f"{', '.join(map(str, record if row.columns is None else row.columns)) or 'none'})"
            )
        value = record[key]
        if not isinstance(value, str):
            raise MalformedRowError(
                f"{row.location}: field {key!r} is {type(value).__name__}, expected a string"
            )
        if not value.strip():
            raise MalformedRowError(f"{row.location}: field {key!r} is empty, expected text")
        return value

    question, output = text(fields.prompt), text(fields.response)
    if fields.task in record or fields.default_task is None:
        task = text(fields.task)
    else:
        task = fields.default_task
    if task not in TASKS:
        raise MalformedRowError(f"{row.location}: field {fields.task!r} is {task!r}, expected one of {TASKS}")
    return question, output, task


def open_rows(
    source: str, columns: list[str], split: str = "train", skip: int = 0
) -> tuple[Iterator[Row], int | None]:
    """Rows of ``source`` from row ``skip`` on, and the total row count when it is known cheaply.

    columns: the fields the caller reads (Parquet reads only these; ones a file lacks are reported
             per row as missing by ``chat_sample``, with the columns the file has).
    Raises ``FileNotFoundError`` / ``ValueError`` / ``ConnectionError`` naming the source before
    any row is read.
    """
    path = Path(source)
    if path.is_dir() and _is_saved_dataset(path):
        return _saved_dataset_rows(path, split, skip)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: holds no {SUFFIXES} files and is no datasets.save_to_disk dir")
    elif path.exists() or path.suffix in SUFFIXES:
        files = [path]
    else:
        return _hub_rows(source, split, skip), None
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"input {f} does not exist")
        if f.suffix not in SUFFIXES:
            raise ValueError(f"{f}: unknown input type {f.suffix!r}; expected one of {SUFFIXES}")
    # JSON Lines would need a pass over the file to count its rows
    total = sum(map(_count_rows, files)) if all(f.suffix == ".parquet" for f in files) else None
    return _concat(files, columns, skip), total


def _concat(files: list[Path], columns: list[str], skip: int) -> Iterator[Row]:
    for f in files:
        if skip and skip >= (n := _count_rows(f)):
            skip -= n
            continue
        yield from _parquet_rows(f, columns, skip) if f.suffix == ".parquet" else _jsonl_rows(f, skip)
        skip = 0


def _count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _jsonl_rows(path: Path, skip: int) -> Iterator[Row]:
    """Non-blank lines as rows (a blank line holds no sample and is not counted); a line that is not
    UTF-8 or not JSON is a row with an error."""
    for seen, (line_no, line, bad_text) in enumerate(text_lines(path), start=1):
        if seen <= skip:
            continue
        if bad_text:
            yield Row(f"{path}:{line_no}", None, bad_text)
            continue
        try:
            yield Row(f"{path}:{line_no}", json.loads(line))
        except json.JSONDecodeError as e:
            yield Row(f"{path}:{line_no}", None, f"not valid JSON ({e})")


def _parquet_rows(path: Path, columns: list[str], skip: int) -> Iterator[Row]:
    pf = pq.ParquetFile(path)
    names = tuple(pf.schema_arrow.names)
    present = [c for c in columns if c in names]
    row = 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if row + n <= skip:  # skip whole row groups without decoding them
            row += n
            continue
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=present):
            for record in batch.to_pylist():
                if row >= skip:
                    yield Row(f"{path} row {row}", record, columns=names)
                row += 1


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _saved_dataset_rows(path: Path, split: str, skip: int) -> tuple[Iterator[Row], int]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KeyError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]

    def rows() -> Iterator[Row]:
        for start in range(skip, len(ds), BATCH_ROWS):
            batch = ds[start : start + BATCH_ROWS]
            keys = list(batch)
            for i, values in enumerate(zip(*batch.values(), strict=True)):
                yield Row(f"{path} row {start + i}", dict(zip(keys, values, strict=True)))

    return rows(), len(ds)


def _hub_rows(name: str, split: str, skip: int) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise ConnectionError(
            f"{name!r} is not a local file or directory, and loading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Offline? Download it elsewhere and pass a JSONL/Parquet file or "
            "a datasets.save_to_disk directory."
        ) from e
    records = enumerate(islice(iter(ds), skip, None), start=skip)
    return (Row(f"{name}[{split}] row {i}", record) for i, record in records)
