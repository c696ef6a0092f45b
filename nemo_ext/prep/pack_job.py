"""The pack job: chat rows -> tokens with an assistant-only loss mask -> FFD bins -> Parquet shards.

Streams in bounded memory: rows are read ``buffer_samples`` at a time; each buffer is tokenized,
packed with first-fit-decreasing (``packing.first_fit_decreasing``) and written as shards of at
most ``bins_per_shard`` bins (a buffer's bins never share a shard with the next buffer's). Peak
memory is about one buffer of token ids (buffer_samples x mean length x 4 bytes).

Resumable: after every shard, ``pack_state.json`` records the buffer being written, how many of
its shards are on disk and the totals up to that buffer (written atomically, after the shard). A
rerun with the same arguments skips the finished buffers' rows unparsed, re-packs the interrupted
buffer (packing is deterministic) and writes only its missing shards, so the result equals an
uninterrupted run's.

Over-long samples (more than ``bin_size`` tokens) are truncated to their first ``bin_size`` tokens
or dropped (``overlong``); under truncation a sample whose prompt alone fills the bin is dropped,
since none of its tokens would be trained. Malformed rows are reported with their location, counted
and skipped, or stop the run with ``strict``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nemo_ext.data.packing import first_fit_decreasing
from nemo_ext.data.shards import (
    HISTOGRAM_PNG,
    METADATA,
    make_bin,
    read_metadata,
    shard_name,
    write_histogram_png,
    write_shard,
)
from nemo_ext.data.sources import (
    MAX_MALFORMED_EXAMPLES,
    ChatFields,
    MalformedRowError,
    Row,
    chat_sample,
    open_rows,
    skip_malformed,
)
from nemo_ext.data.tokenize import TokenizedSample, tokenize_chats
from nemo_ext.io import atomic_write_json
from nemo_ext.output_lock import OutputLock

log = logging.getLogger(__name__)

STATE = "pack_state.json"
OVERLONG_POLICIES = ("truncate", "drop")
HISTOGRAM_BUCKETS = 32  # equal-width length buckets up to bin_size, plus one for longer samples
TOKENIZE_BATCH = 256  # samples per tokenizer call
FORMAT = "nemo_ext packed SFT v1 (docs/data.md)"


@dataclass(frozen=True)
class PackConfig:
    """Everything a pack run depends on (``strict`` aside, all of it must match to resume)."""

    input: str  # JSONL / Parquet file, directory, datasets.save_to_disk dir or hub name
    output: str  # output directory
    tokenizer: str  # path (or hub name) for transformers.AutoTokenizer
    bin_size: int  # tokens per bin
    fields: ChatFields = ChatFields()
    split: str = "train"  # for datasets sources
    overlong: str = "truncate"
    bins_per_shard: int = 1024
    buffer_samples: int = 10_000
    strict: bool = False  # stop at the first malformed row instead of skipping it

    def __post_init__(self):
        for name in ("bin_size", "bins_per_shard", "buffer_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")

    def identity(self) -> dict:
        """The settings that determine the output, local paths made absolute."""
        out = asdict(self)
        del out["output"], out["strict"]
        for key in ("input", "tokenizer"):
            if os.path.exists(out[key]):
                out[key] = os.path.abspath(out[key])
        return out


@dataclass
class PackStats:
    """Counts of a run or of one buffer. read = packed + dropped + malformed."""

    read: int = 0
    packed: int = 0  # samples in bins, truncated ones included
    truncated: int = 0
    dropped: int = 0
    malformed: int = 0
    bins: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_BUCKETS + 1))
    shards: list[dict] = field(default_factory=list)  # {"file": name, "bins": count}
    malformed_examples: list[str] = field(default_factory=list)

    def merge(self, other: PackStats) -> None:
        for name in ("read", "packed", "truncated", "dropped", "malformed", "bins", "tokens", "loss_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]
        self.shards += other.shards
        room = MAX_MALFORMED_EXAMPLES - len(self.malformed_examples)
        self.malformed_examples += other.malformed_examples[: max(room, 0)]


def histogram_edges(bin_size: int) -> list[int]:
    return np.linspace(0, bin_size, HISTOGRAM_BUCKETS + 1).round().astype(int).tolist()


def length_histogram(lengths: np.ndarray, bin_size: int) -> list[int]:
    """Counts of ``lengths`` per bucket of ``histogram_edges`` (last bucket closed), then the overflow."""
    edges = np.asarray(histogram_edges(bin_size))
    bucket = np.minimum(np.searchsorted(edges, lengths, side="right") - 1, HISTOGRAM_BUCKETS - 1)
    bucket[lengths > bin_size] = HISTOGRAM_BUCKETS
    return np.bincount(bucket, minlength=HISTOGRAM_BUCKETS + 1).tolist()


def fit_to_bin(sample: TokenizedSample, bin_size: int, overlong: str) -> TokenizedSample | None:
    """The sample as packed: itself, truncated to ``bin_size``, or None if dropped."""
    if len(sample) <= bin_size:
        return sample
    if overlong == "truncate" and sample.prompt_len < bin_size:
        return sample.truncated(bin_size)
    return None


def read_buffer(rows, cfg: PackConfig, tokenizer, stats: PackStats) -> list[TokenizedSample] | None:
    """Read up to ``cfg.buffer_samples`` rows into packable samples, counting into ``stats``.

    Returns None once ``rows`` is exhausted.
    """
    samples: list[TokenizedSample] = []
    lengths: list[int] = []
    buffer = islice(rows, cfg.buffer_samples)
    while chunk := list(islice(buffer, TOKENIZE_BATCH)):
        stats.read += len(chunk)
        chats = [c for c in (_parse(row, cfg, stats) for row in chunk) if c is not None]
        if not chats:
            continue
        for sample in tokenize_chats(tokenizer, *zip(*chats, strict=True)):
            lengths.append(len(sample))
            fitted = fit_to_bin(sample, cfg.bin_size, cfg.overlong)
            stats.dropped += fitted is None
            stats.truncated += fitted is not None and fitted is not sample
            if fitted is not None:
                samples.append(fitted)
    if stats.read == 0:
        return None
    stats.packed = len(samples)
    stats.histogram = length_histogram(np.asarray(lengths, dtype=np.int64), cfg.bin_size)
    return samples


def _parse(row: Row, cfg: PackConfig, stats: PackStats) -> tuple[str, str, str] | None:
    try:
        return chat_sample(row, cfg.fields)
    except MalformedRowError as e:
        skip_malformed(e, cfg.strict, stats)
        return None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise OSError(f"could not load a tokenizer from {path!r}: {type(e).__name__}: {e}") from e


def _load_state(out: Path, cfg: PackConfig) -> dict | None:
    path = out / STATE
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    then, now = state["config"], cfg.identity()
    changed = [f"{k}: {then.get(k)!r} then, {now[k]!r} now" for k in now if then.get(k) != now[k]]
    if changed:
        raise ValueError(
            f"{out} holds a pack run with other settings ({'; '.join(changed)}): pass a new --output, "
            "or delete the directory to start over"
        )
    return state


def _save_state(out: Path, cfg: PackConfig, buffer: int, shards_done: int, totals: PackStats, complete=False):
    """Progress: buffers before ``buffer`` are done (``totals``), and ``shards_done`` shards of it."""
    state = dict(config=cfg.identity(), buffer=buffer, shards_in_buffer=shards_done, complete=complete)
    atomic_write_json(out / STATE, {**state, "totals": asdict(totals)})


def _bin(samples: list[TokenizedSample], indices: list[int]) -> dict[str, np.ndarray]:
    return make_bin([samples[i].input_ids for i in indices], [samples[i].loss_mask for i in indices])


def nothing_packed(totals: PackStats) -> str:
    """Why a run packed no sample: its counts, and the first malformed row's message if any."""
    why = (f"{totals.read} rows read, {totals.malformed} malformed, {totals.dropped} dropped as longer than "
           "the bin (--overlong drop, or a prompt that fills the bin)")
    return why + (f"; first malformed: {totals.malformed_examples[0]}" if totals.malformed_examples else "")


def metadata(cfg: PackConfig, totals: PackStats) -> dict:
    """The ``metadata.json`` of a finished run."""
    counts = {k: getattr(totals, k) for k in ("read", "packed", "truncated", "dropped", "malformed")}
    counts.update(bins=totals.bins, tokens=totals.tokens, loss_tokens=totals.loss_tokens)
    return {
        "format": FORMAT,
        "bin_size": cfg.bin_size,
        "source": cfg.input,
        "split": cfg.split,
        "tokenizer": cfg.tokenizer,
        "fields": asdict(cfg.fields),
        "overlong": cfg.overlong,
        "buffer_samples": cfg.buffer_samples,
        "bins_per_shard": cfg.bins_per_shard,
        "counts": counts,
        "packing_efficiency": totals.tokens / (totals.bins * cfg.bin_size) if totals.bins else 0.0,
        "length_histogram": {
            "edges": histogram_edges(cfg.bin_size),
            "counts": totals.histogram[:-1],
            "over_bin_size": totals.histogram[-1],
        },
        "shards": totals.shards,
        "malformed_examples": totals.malformed_examples,
    }


def pack_dataset(cfg: PackConfig, progress: bool = True) -> dict:
    """Run (or resume, or find finished) the pack job of ``cfg``; returns its metadata. Holds the output's
    lock (``OutputLock``) throughout. Raises ValueError, leaving no output directory, when no sample
    could be packed."""
    with OutputLock(cfg.output):
        return _pack(cfg, progress)


def _pack(cfg: PackConfig, progress: bool) -> dict:
    out = Path(cfg.output)
    state = _load_state(out, cfg)
    if state and state["complete"]:
        log.info("%s is already packed", out)
        return read_metadata(out)
    buffer, skip_shards = (state["buffer"], state["shards_in_buffer"]) if state else (0, 0)
    totals = PackStats(**state["totals"]) if state else PackStats()
    columns = [cfg.fields.prompt, cfg.fields.response, cfg.fields.task]
    rows, total = open_rows(cfg.input, columns, cfg.split, skip=buffer * cfg.buffer_samples)
    tokenizer = load_tokenizer(cfg.tokenizer)
    out.mkdir(parents=True, exist_ok=True)  # only once the input and the tokenizer opened
    with tqdm(rows, total=total, initial=totals.read, unit="row", disable=not progress) as bar:
        rows = iter(bar)  # one iterator: each iter(bar) would start a new tqdm generator
        while (samples := read_buffer(rows, cfg, tokenizer, stats := PackStats())) is not None:
            bins = first_fit_decreasing([len(s) for s in samples], cfg.bin_size)
            for j, start in enumerate(range(0, len(bins), cfg.bins_per_shard)):
                group = bins[start : start + cfg.bins_per_shard]
                name = shard_name(len(totals.shards) + j)
                stats.shards.append({"file": name, "bins": len(group)})
                if j >= skip_shards:
                    write_shard(out / name, [_bin(samples, b) for b in group])
                    _save_state(out, cfg, buffer, j + 1, totals)
            stats.bins = len(bins)
            stats.tokens = sum(len(s) for s in samples)
            stats.loss_tokens = sum(len(s) - s.prompt_len for s in samples)
            totals.merge(stats)
            buffer, skip_shards = buffer + 1, 0
            _save_state(out, cfg, buffer, 0, totals)
            bar.set_postfix(bins=totals.bins, malformed=totals.malformed)
    if totals.bins == 0:
        if {p.name for p in out.iterdir()} <= {STATE}:
            shutil.rmtree(out)
        raise ValueError(f"{cfg.input}: nothing to pack, {cfg.output} not written: {nothing_packed(totals)}")
    meta = metadata(cfg, totals)
    hist = meta["length_histogram"]
    write_histogram_png(out / HISTOGRAM_PNG, hist["edges"], hist["counts"], hist["over_bin_size"])
    atomic_write_json(out / METADATA, meta)
    _save_state(out, cfg, buffer, 0, totals, complete=True)
    return meta
