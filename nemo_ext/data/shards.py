"""Packed SFT shards on disk: Parquet files of bins, their metadata, and random access to them.

The format (docs/data.md; the Megatron-Bridge packed-sequence columns) is a contract other code
relies on. An output directory holds ``shard-00000.parquet``, ``shard-00001.parquet``, ... with one
row per bin:

    input_ids:    list<int32>  the bin's tokens, sequences laid end to end, no padding
                               (len(input_ids) <= bin_size)
    loss_mask:    list<int8>   same length; 1 where the token is an assistant token the model learns
                               to predict (aligned with the token; the trainer shifts it onto targets)
    seq_start_id: list<int32>  offset of each sequence inside the bin; the first is 0

plus ``metadata.json`` (bin size, counts, packing efficiency, length histogram, the shard list) and
``length_histogram.png``. Every file is written to a temporary name and renamed into place, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_ext.io import atomic_write

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("seq_start_id", pa.list_(pa.int32())),
    ]
)
COLUMN_DTYPES = {"input_ids": np.int32, "loss_mask": np.int8, "seq_start_id": np.int32}
METADATA = "metadata.json"
HISTOGRAM_PNG = "length_histogram.png"
ROW_GROUP_BINS = 16  # bins per Parquet row group: the unit PackedDataset reads and caches


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def make_bin(sequences: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """One bin from its sequences: [L_i] token ids and [L_i] loss masks, laid end to end."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    starts = np.zeros(len(lengths), dtype=np.int32)
    np.cumsum(lengths[:-1], out=starts[1:])
    return {
        "input_ids": np.concatenate(sequences).astype(np.int32, copy=False),
        "loss_mask": np.concatenate(masks).astype(np.int8, copy=False),
        "seq_start_id": starts,
    }


def _list_array(arrays: Sequence[np.ndarray], dtype) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"a shard holds {offsets[-1]} values, more than int32 offsets allow: use fewer bins")
    values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def write_shard(path: str | os.PathLike, bins: Sequence[dict[str, np.ndarray]]) -> None:
    """Atomically write bins (dicts from ``make_bin``) as one Parquet shard, one row per bin."""
    table = pa.Table.from_arrays(
        [_list_array([b[name] for b in bins], dtype) for name, dtype in COLUMN_DTYPES.items()],
        schema=SCHEMA,
    )
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_BINS))


def read_metadata(directory: str | os.PathLike) -> dict:
    """The ``metadata.json`` of a finished pack; a clear error if packing has not finished."""
    path = Path(directory) / METADATA
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {directory} is not a finished pack "
            "(rerun data_prep/pack.py with the same arguments to resume it)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _shard_paths(directory: str | os.PathLike) -> list[Path]:
    return [Path(directory) / s["file"] for s in read_metadata(directory)["shards"]]


def _rows(table: pa.Table) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per column (offsets [R+1], values [N]) of a table's list columns."""
    out = []
    for name in COLUMN_DTYPES:
        col = table.column(name).combine_chunks()
        out.append((col.offsets.to_numpy(), col.values.to_numpy()))
    return out


def _bin(columns: list[tuple[np.ndarray, np.ndarray]], r: int) -> dict[str, np.ndarray]:
    return {name: v[o[r] : o[r + 1]] for name, (o, v) in zip(COLUMN_DTYPES, columns, strict=True)}


def iter_bins(directory: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
    """Every bin of a finished pack in shard order, as a dict of the three columns (numpy arrays)."""
    for path in _shard_paths(directory):
        pf = pq.ParquetFile(path)
        for rg in range(pf.metadata.num_row_groups):
            columns = _rows(pf.read_row_group(rg, columns=list(COLUMN_DTYPES)))
            for r in range(len(columns[0][0]) - 1):
                yield _bin(columns, r)


class PackedDataset:
    """Random access to the bins of a finished pack, across shards (a map-style dataset).

    ``ds[i]`` returns bin i (shard order) as ``{"input_ids": [L] int32, "loss_mask": [L] int8,
    "seq_start_id": [S] int32}``. Reads go by Parquet row group (``ROW_GROUP_BINS`` bins); the
    ``cache_groups`` most recently used groups stay decoded, so sequential and shuffled-in-blocks
    access read each group once. Files are opened lazily per process, so it is safe to fork (e.g.
    DataLoader workers).
    """

    def __init__(self, directory: str | os.PathLike, cache_groups: int = 8):
        self.directory = Path(directory)
        self.metadata = read_metadata(directory)
        self.bin_size: int = self.metadata["bin_size"]
        self._paths = _shard_paths(directory)
        self._groups: list[tuple[int, int]] = []  # (shard, row group) in order
        self._group_start: list[int] = []  # first bin index of each group
        total = 0
        for s, path in enumerate(self._paths):
            meta = pq.ParquetFile(path).metadata
            for rg in range(meta.num_row_groups):
                self._groups.append((s, rg))
                self._group_start.append(total)
                total += meta.row_group(rg).num_rows
        self._len = total
        self._cache_groups = cache_groups
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._files: dict[int, pq.ParquetFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -self._len <= index < self._len:
            raise IndexError(f"bin {index} out of range for {self._len} bins in {self.directory}")
        index %= self._len
        g = bisect.bisect_right(self._group_start, index) - 1
        return _bin(self._group(g), index - self._group_start[g])

    def _group(self, g: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if os.getpid() != self._pid:  # forked: do not share file handles with the parent
            self._files, self._cache, self._pid = {}, OrderedDict(), os.getpid()
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        shard, rg = self._groups[g]
        if shard not in self._files:
            self._files[shard] = pq.ParquetFile(self._paths[shard])
        columns = _rows(self._files[shard].read_row_group(rg, columns=list(COLUMN_DTYPES)))
        self._cache[g] = columns
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return columns


def write_histogram_png(
    path: str | os.PathLike, edges: Sequence[int], counts: Sequence[int], over: int
) -> None:
    """Atomically plot a sample-length histogram (``over``: samples longer than the last edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(edges)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black", linewidth=0.3)
    ax.set_xlabel("sample length (tokens)")
    ax.set_ylabel("samples")
    ax.set_title(f"sample lengths; {over} longer than the bin size {edges[-1]}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
