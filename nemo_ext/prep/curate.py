"""The curation job: chat rows -> exact prompt dedup -> n-gram decontamination -> difficulty balancing.

AceReason-Nemotron 1.1's "cleaning" and "difficulty balancing" rows (../shared/PAPER.md) as a
streaming job over JSONL / Parquet / ``datasets`` sources (``sources.open_rows``):

1. Pass 1 reads every row once: malformed rows are reported with their location, counted and
   skipped; ``curate_text.PromptDedup`` drops repeated (prompt, response) samples and responses
   over ``max_responses_per_prompt``; ``curate_text.find_overlaps`` drops rows that share a word
   n-gram with a benchmark problem. It keeps, per surviving row, its row number, response length and
   prompt key: 24 bytes a row, plus the dedup tables (about 100 bytes per kept sample).
2. ``curate_balance.balance`` turns the lengths into a copy count per row (thinning, resampling).
3. Pass 2 reads the source again and writes each surviving row ``copies`` times, unchanged (every
   field kept, in input order, copies adjacent), as JSONL or Parquet part files.

The output directory is built beside its final path and renamed into place at the end
(``io.atomic_dir``): an interrupted run leaves the previous output or none, never half of one. It is
not resumable: rerun it. The source must not change between the two passes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nemo_ext.data.curate_balance import (
    DEFAULT_EDGES,
    DEFAULT_FACTORS,
    approx_tokens,
    balance,
    check_levels,
    histogram,
    tokenizer_lengths,
)
from nemo_ext.data.curate_text import NgramIndex, PromptDedup, build_index, find_overlaps, normalize_prompt, text_hash64
from nemo_ext.data.sources import (
    ChatFields,
    MalformedRowError,
    Row,
    chat_sample,
    open_rows,
    skip_malformed,
)
from nemo_ext.evaluation.config import DEFAULT_REGISTRY
from nemo_ext.io import atomic_dir, atomic_write, atomic_write_json
from nemo_ext.output_lock import OutputLock

log = logging.getLogger(__name__)

FORMAT = "nemo_ext curated chat rows v1 (docs/data.md)"
METADATA = "metadata.json"
HISTOGRAM_PNG = "length_histogram.png"
DATA_DIR = "data"  # the part files, so that data_prep/pack.py can take this directory as --input
NORMALIZATION = (
    "prompt dedup key: BLAKE2b-64 of the prompt after NFKC, casefold, whitespace runs -> one space, strip; "
    "n-grams: runs of \\w in the NFKC casefolded text, each word BLAKE2b-64, an n-gram the polynomial "
    "sum w[i+j] * 0x9E3779B97F4A7C15**(n-1-j) mod 2**64"
)
DECONTAMINATE = ("prompt", "response", "both", "none")
BALANCE_UNITS = ("prompt", "sample", "none")
OUTPUT_FORMATS = ("jsonl", "parquet")
CHUNK_ROWS = 1024  # rows decontaminated / tokenized together
MAX_OVERLAP_EXAMPLES = 5  # per benchmark


@dataclass(frozen=True)
class BenchmarkSources:
    """Where benchmark problems come from: registry entries and/or local files."""

    names: tuple[str, ...] = ()  # entries of the registry, loaded by nemo_ext.evaluation.loaders
    registry: str = str(DEFAULT_REGISTRY)
    overrides: tuple[str, ...] = ()  # registry dotlist, e.g. "benchmarks.aime24.source.path=/x.jsonl"
    files: tuple[str, ...] = ()  # JSONL / Parquet files or directories; benchmark name = file stem
    field: str = "problem"  # the problem text's field in ``files``


@dataclass(frozen=True)
class CurateConfig:
    """Everything a curation run depends on. Defaults: PAPER.md rows "cleaning" and "difficulty balancing"."""

    input: str
    output: str
    fields: ChatFields = ChatFields()  # response "" = prompt-only data (RL problems)
    split: str = "train"
    output_format: str = "jsonl"
    rows_per_shard: int = 100_000
    max_responses_per_prompt: int | None = None  # None: every distinct response is kept
    ngram: int = 9  # 9 for SFT ("cleaning"); the paper's RL code data used 14 ("RL data")
    decontaminate: str = "prompt"
    benchmarks: BenchmarkSources = BenchmarkSources()
    tokenizer: str | None = None  # None: approx_tokens (characters / 4)
    length_edges: tuple[int, ...] = DEFAULT_EDGES
    level_factors: tuple[float, ...] = DEFAULT_FACTORS
    balance_unit: str = "prompt"
    seed: int = 0
    strict: bool = False

    def __post_init__(self):
        for name, allowed in (("decontaminate", DECONTAMINATE), ("balance_unit", BALANCE_UNITS),
                              ("output_format", OUTPUT_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ngram < 1 or self.rows_per_shard < 1:
            raise ValueError(f"ngram and rows_per_shard must be >= 1, got {self.ngram}, {self.rows_per_shard}")
        if not self.fields.response and (self.decontaminate in ("response", "both") or self.balance_unit != "none"):
            raise ValueError("without a response field (prompt-only data) decontaminate must be 'prompt' or "
                             "'none' and balancing 'none' (--balance none): lengths come from responses")
        check_levels(self.length_edges, self.level_factors)


@dataclass
class CurateStats:
    """Counts of a run: read = malformed + duplicates + over_response_cap + contaminated + clean;
    written = clean - thinned + resampled."""

    read: int = 0
    malformed: int = 0
    duplicates: int = 0  # same normalized prompt and same response as an earlier kept row
    over_response_cap: int = 0  # responses beyond max_responses_per_prompt
    contaminated: int = 0  # rows dropped for sharing an n-gram with any benchmark
    clean: int = 0
    thinned: int = 0  # clean rows balancing left out
    resampled: int = 0  # extra copies balancing added
    written: int = 0
    unique_prompts: int = 0  # distinct normalized prompts among the written rows
    contaminated_by_benchmark: dict[str, int] = field(default_factory=dict)  # a row counts for each it hits
    overlap_examples: dict[str, list[dict]] = field(default_factory=dict)
    malformed_examples: list[str] = field(default_factory=list)


def load_benchmarks(src: BenchmarkSources) -> dict[str, list[tuple[str, str]]]:
    """``{benchmark name: [(problem id, problem text), ...]}``; errors name the entry, file and row."""
    out: dict[str, list[tuple[str, str]]] = {}
    if src.names:
        from nemo_ext.evaluation.loaders import load_problems
        from nemo_ext.evaluation.registry import load_registry

        registry = load_registry(src.registry, list(src.overrides))
        for name in src.names:
            if name not in registry.benchmarks:
                raise KeyError(f"unknown benchmark {name!r}; {src.registry} has: {', '.join(registry.benchmarks)}")
            out[name] = [(p["id"], p["question"]) for p in load_problems(name, registry.benchmarks[name])]
    # the problem field checked by chat_sample; the task key "" is in no record, so no task is checked
    problem_only = ChatFields(prompt=src.field, response=src.field, task="", default_task="math")
    for path in src.files:
        name = Path(path).stem
        if name in out:
            raise ValueError(f"benchmark name {name!r} given twice (registry entry or file stem of {path})")
        rows, _ = open_rows(path, [src.field], split="test")
        out[name] = [(row.location, chat_sample(row, problem_only)[0]) for row in rows]
        if not out[name]:
            raise ValueError(f"benchmark file {path} holds no rows")
    return out


def benchmark_index(src: BenchmarkSources, n: int, enabled: bool = True) -> NgramIndex:
    """The n-gram index of the benchmarks of ``src`` (empty when not ``enabled``); warns about problems
    shorter than ``n`` words, which cannot be matched."""
    index = build_index(load_benchmarks(src) if enabled else {}, n)
    for name, short in zip(index.names, index.too_short, strict=True):
        if short:
            log.warning("benchmark %s: %d problems have fewer than %d words and cannot be matched", name, short, n)
    return index


def benchmark_report(index: NgramIndex, stats) -> dict:
    """metadata.json's ``benchmarks``: per benchmark its problems, too_short, ngrams, the rows it
    contaminated and their examples (from ``stats`` filled by ``mark_contaminated``)."""
    return {
        name: {
            "problems": len(index.problem_ids[b]),
            "too_short": index.too_short[b],
            "ngrams": int((index.benchmark == b).sum()),
            "contaminated": stats.contaminated_by_benchmark[name],
            "examples": stats.overlap_examples[name],
        }
        for b, name in enumerate(index.names)
    }


def _texts(row: Row, fields: ChatFields) -> tuple[str, str]:
    """(prompt, response) of a row, checked by ``chat_sample``; response "" for prompt-only data."""
    if fields.response:
        prompt, response, _ = chat_sample(row, fields)
        return prompt, response
    return chat_sample(row, replace(fields, response=fields.prompt))[0], ""


def _parse(row: Row, cfg: CurateConfig, stats: CurateStats) -> tuple[str, str] | None:
    try:
        return _texts(row, cfg.fields)
    except MalformedRowError as e:
        skip_malformed(e, cfg.strict, stats)
        return None


def mark_contaminated(index: NgramIndex, rows: list[tuple], mode: str, stats) -> list[bool]:
    """Per row (ordinal, location, prompt, response, key): shares an n-gram with a benchmark. Counted in
    ``stats.contaminated_by_benchmark`` and ``stats.overlap_examples`` (dicts keyed by benchmark name)."""
    if mode == "none" or not rows:
        return [False] * len(rows)
    parts = {"prompt": (2,), "response": (3,), "both": (2, 3)}[mode]
    overlaps = find_overlaps(index, [r[p] for r in rows for p in parts])
    flags = []
    for i, r in enumerate(rows):
        hits = {k: v for o in overlaps[i * len(parts) : (i + 1) * len(parts)] for k, v in o.items()}
        for name, hit in hits.items():
            stats.contaminated_by_benchmark[name] += 1
            examples = stats.overlap_examples[name]
            if len(examples) < MAX_OVERLAP_EXAMPLES:
                examples.append({"row": r[1], "problem": hit.problem_id, "ngram": hit.ngram})
        flags.append(bool(hits))
    return flags


def scan(rows, cfg: CurateConfig, index: NgramIndex, tokenizer, stats: CurateStats):
    """Pass 1: (row numbers [K] int64, response lengths [K] int64, prompt keys [K] uint64) of the
    rows that survive dedup and decontamination, counting into ``stats``."""
    dedup = PromptDedup(cfg.max_responses_per_prompt)
    ordinals, lengths, keys = [], [], []
    numbered = enumerate(rows)
    while chunk := list(islice(numbered, CHUNK_ROWS)):
        kept = []
        for ordinal, row in chunk:
            stats.read += 1
            if (texts := _parse(row, cfg, stats)) is None:
                continue
            key = text_hash64(normalize_prompt(texts[0]))
            if reason := dedup.admit(key, texts[1]):
                setattr(stats, reason, getattr(stats, reason) + 1)
            else:
                kept.append((ordinal, row.location, *texts, key))
        flags = mark_contaminated(index, kept, cfg.decontaminate, stats)
        clean = [r for r, bad in zip(kept, flags, strict=True) if not bad]
        stats.contaminated += len(kept) - len(clean)
        responses = [r[3] for r in clean]
        lengths.append(tokenizer_lengths(tokenizer, responses) if tokenizer else approx_tokens(responses))
        ordinals.append(np.fromiter((r[0] for r in clean), np.int64, count=len(clean)))
        keys.append(np.fromiter((r[4] for r in clean), np.uint64, count=len(clean)))
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)
    return cat(ordinals, np.int64), cat(lengths, np.int64), cat(keys, np.uint64)


class PartWriter:
    """Rows (dicts) into ``part-00000.<fmt>``, ... of at most ``rows_per_part`` rows each in ``directory``.

    Not atomic per file: the job writes inside a temporary directory renamed as a whole at the end.
    """

    def __init__(self, directory: Path, fmt: str, rows_per_part: int):
        self.directory, self.fmt, self.rows_per_part = directory, fmt, rows_per_part
        self.parts: list[dict] = []  # {"file": name, "rows": count}
        self._rows: list[dict] = []
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        self._rows.append(record)
        if len(self._rows) == self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        name = f"part-{len(self.parts):05d}.{self.fmt}"
        if self.fmt == "jsonl":
            with open(self.directory / name, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in self._rows)
        else:  # pa.array infers the union of every row's keys (from_pylist would keep only the first's)
            pq.write_table(pa.Table.from_struct_array(pa.array(self._rows)), self.directory / name)
        self.parts.append({"file": f"{DATA_DIR}/{name}", "rows": len(self._rows)})
        self._rows = []


def _source_columns(source: str, fields: ChatFields) -> list[str]:
    """Every column of a Parquet source (so pass 2 copies whole rows); the chat fields otherwise."""
    path = Path(source)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.suffix == ".parquet" else []
    names = [fields.prompt, fields.response, fields.task]
    for f in files:
        names += pq.read_schema(f).names
    return list(dict.fromkeys(n for n in names if n))


def write_rows(cfg: CurateConfig, out: Path, ordinals: np.ndarray, copies: np.ndarray, progress: bool) -> list[dict]:
    """Pass 2: each row numbered ``ordinals[i]`` written ``copies[i]`` times; returns the part list."""
    writer = PartWriter(out / DATA_DIR, cfg.output_format, cfg.rows_per_shard)
    rows, total = open_rows(cfg.input, _source_columns(cfg.input, cfg.fields), cfg.split)
    wanted = iter(zip(ordinals.tolist(), copies.tolist(), strict=True))  # ascending row numbers
    nxt = next(wanted, None)
    with tqdm(rows, total=total, unit="row", desc="write", disable=not progress) as bar:
        for ordinal, row in enumerate(bar):
            if nxt is None:
                break
            if ordinal == nxt[0]:
                for _ in range(nxt[1]):
                    writer.write(row.record)
                nxt = next(wanted, None)
    writer.flush()
    return writer.parts


def write_histogram_png(path: Path, hist: dict) -> None:
    """Atomically plot the response-length histograms before and after balancing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(hist["edges"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, style in (("before", dict(alpha=0.45)), ("after", dict(histtype="step", linewidth=1.5))):
        ax.hist(edges[:-1], bins=edges, weights=hist[key], label=f"{key} ({hist[f'over_{key}']} above)", **style)
    for edge in hist["level_edges"]:
        ax.axvline(edge, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"response length ({hist['unit']})")
    ax.set_ylabel("samples")
    ax.set_title("response lengths before and after difficulty balancing (dashed: level edges)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _check_output(cfg: CurateConfig) -> Path:
    out, source = Path(cfg.output).resolve(), Path(cfg.input).resolve()
    if out == source or out in source.parents:
        raise ValueError(f"--output {cfg.output} would replace the input {cfg.input}")
    if out.exists() and _format_of(out / METADATA) != FORMAT:
        raise ValueError(f"--output {cfg.output} exists and is no curation output: refusing to replace it")
    return out


def _format_of(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def curate(cfg: CurateConfig, progress: bool = True) -> dict:
    """Run the curation job of ``cfg``; returns its metadata (also in ``<output>/metadata.json``). Holds
    the output's lock (``OutputLock``) throughout. Raises ValueError, leaving any old output as it was,
    when no row survives."""
    with OutputLock(cfg.output):
        return _curate(cfg, progress)


def _curate(cfg: CurateConfig, progress: bool) -> dict:
    out = _check_output(cfg)
    index = benchmark_index(cfg.benchmarks, cfg.ngram, enabled=cfg.decontaminate != "none")
    stats = CurateStats(contaminated_by_benchmark=dict.fromkeys(index.names, 0),
                        overlap_examples={name: [] for name in index.names})
    tokenizer = None
    if cfg.tokenizer:
        from nemo_ext.prep.pack_job import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    rows, total = open_rows(cfg.input, [cfg.fields.prompt, cfg.fields.response, cfg.fields.task], cfg.split)
    with tqdm(rows, total=total, unit="row", desc="scan", disable=not progress) as bar:
        ordinals, lengths, keys = scan(bar, cfg, index, tokenizer, stats)
    stats.clean = len(ordinals)
    if cfg.balance_unit == "none":
        copies, levels = np.ones(len(ordinals), np.int64), []
    else:
        groups = keys if cfg.balance_unit == "prompt" else None
        copies, levels = balance(lengths, cfg.length_edges, cfg.level_factors, cfg.seed, groups)
    stats.thinned = int((copies == 0).sum())
    stats.resampled = int(np.maximum(copies - 1, 0).sum())
    stats.written = int(copies.sum())
    stats.unique_prompts = len(np.unique(keys[copies > 0]))
    if stats.written == 0:
        counts = ", ".join(f"{k} {v}" for k, v in asdict(stats).items() if isinstance(v, int) and v)
        first = f"; first malformed: {stats.malformed_examples[0]}" if stats.malformed_examples else ""
        raise ValueError(f"{cfg.input}: no row left to write, {cfg.output} not written ({counts or 'no rows'}){first}")
    with atomic_dir(out) as tmp:
        parts = write_rows(cfg, tmp, ordinals, copies, progress)
        unit = "tokens" if tokenizer is not None else "approx tokens (characters / 4)"
        histograms = length_histograms(cfg, lengths, copies, unit)
        meta = metadata(cfg, stats, index, levels, parts, histograms)
        if histograms:
            write_histogram_png(tmp / HISTOGRAM_PNG, histograms)
        atomic_write_json(tmp / METADATA, meta)
    return meta


def length_histograms(cfg: CurateConfig, lengths: np.ndarray, copies: np.ndarray, unit: str) -> dict | None:
    """Response lengths [K] before and after balancing (``copies`` [K]) on 40 bins up to 2 x the last edge."""
    if not cfg.fields.response:
        return None
    top = 2 * cfg.length_edges[-1] if cfg.length_edges else max(int(lengths.max(initial=1)), 1)
    edges, before, over_before = histogram(lengths, None, top)
    _, after, over_after = histogram(lengths, copies, top)
    return {"edges": edges, "before": before, "after": after, "over_before": over_before,
            "over_after": over_after, "level_edges": list(cfg.length_edges), "unit": unit}


def metadata(cfg: CurateConfig, stats: CurateStats, index: NgramIndex, levels: list[dict], parts: list[dict],
             histograms: dict | None) -> dict:
    """The ``metadata.json`` of a finished run (docs/data.md lists its keys)."""
    settings = asdict(cfg)
    for key in ("input", "tokenizer"):
        if settings[key] and os.path.exists(settings[key]):
            settings[key] = os.path.abspath(settings[key])
    return {
        "format": FORMAT,
        "settings": settings,
        "normalization": NORMALIZATION,
        "counts": {k: v for k, v in asdict(stats).items() if isinstance(v, int)},
        "benchmarks": benchmark_report(index, stats),
        "levels": levels,
        "length_histogram": histograms,
        "parts": parts,
        "malformed_examples": stats.malformed_examples,
    }
