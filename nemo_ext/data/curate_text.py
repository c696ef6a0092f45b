"""Text keys for curation: prompt normalization for exact dedup, and word n-gram decontamination.

AceReason-Nemotron 1.1 cleans its SFT data by "exact dedup of prompts; drop any sample with a 9-gram
overlap with a math or code benchmark" (/work/shared/PAPER.md, "cleaning"); its RL code data uses
14-grams ("RL data"). This module holds the pure parts of both:

- ``normalize_prompt``: Unicode NFKC, then ``str.casefold``, then every run of Unicode whitespace
  collapsed to one space and the ends stripped. Two prompts are the same prompt when these strings are
  equal; ``text_hash64`` of it is the dedup key.
- ``ngram_words``: the words n-grams are made of: NFKC, casefold, then the maximal runs of ``\\w``
  (Unicode letters, digits, underscore). Punctuation, LaTeX delimiters and whitespace only separate
  words, so ``$9$-kilometer`` and ``9 kilometer`` give the same words.
- n-gram hashes: each word is hashed to 64 bits with BLAKE2b (``digest_size=8``, little-endian), and
  an n-gram is the polynomial ``sum_j w[i+j] * P**(n-1-j) mod 2**64`` of its word hashes (P odd, so
  two different n-grams collide with probability about 2**-64). Stable across processes and
  machines, unlike Python's ``hash()``; computed for a whole batch of texts with a few numpy ops.

Left out: near-duplicate detection (MinHash) and fuzzy matching; a benchmark problem shorter than
``n`` words has no n-gram and cannot be matched (``NgramIndex.too_short`` counts them).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

WORD = re.compile(r"\w+")
POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram polynomial (2**64 / golden ratio)
WORD_CACHE_LIMIT = 2_000_000  # word hashes kept in memory before the cache is cleared


def normalize_prompt(text: str) -> str:
    """NFKC, casefold, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash64(text: str) -> int:
    """BLAKE2b-64 of the UTF-8 text as an unsigned int (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_words(text: str) -> list[str]:
    """The words of ``text`` for n-grams: runs of ``\\w`` in its NFKC, casefolded form."""
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


class _WordHashes(dict):
    """word -> BLAKE2b-64 (a dict whose misses compute and store the hash)."""

    def __missing__(self, word: str) -> int:
        if len(self) >= WORD_CACHE_LIMIT:
            self.clear()
        value = self[word] = text_hash64(word)
        return value


_WORD_HASHES = _WordHashes()


def rolling_ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """[W] uint64 word hashes -> [max(W - n + 1, 0)] uint64 hashes of every n consecutive words."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    out = np.zeros(count, np.uint64)
    for j in range(n):  # uint64 arithmetic wraps: everything is mod 2**64
        out *= POLY
        out += word_hashes[j : j + count]
    return out


def batch_ngram_hashes(words: Sequence[list[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-grams of several texts at once, none crossing from one text into the next.

    words: per text its ``ngram_words``.
    Returns (hashes [G] uint64, text [G] int64 index into ``words``, position [G] int64 of the
    n-gram's first word in its text).
    """
    lengths = np.fromiter(map(len, words), np.int64, count=len(words))
    total = int(lengths.sum())
    flat = np.fromiter(map(_WORD_HASHES.__getitem__, chain.from_iterable(words)), np.uint64, count=total)
    hashes = rolling_ngram_hashes(flat, n)
    owner = np.repeat(np.arange(len(words)), lengths)  # [total] text of each word
    keep = owner[: len(hashes)] == owner[n - 1 :]  # first and last word in the same text
    first = np.flatnonzero(keep)
    text = owner[first]
    starts = np.cumsum(lengths) - lengths
    return hashes[first], text, first - starts[text]


@dataclass(frozen=True)
class NgramIndex:
    """The n-grams of benchmark problems, sorted for lookup (16 bytes per n-gram, plus ``present``: 64-128
    one-byte slots per n-gram, at most 64 MB).

    hashes [M] uint64 sorted; benchmark [M] int32 and problem [M] int32 say whose n-gram each is (an
    n-gram in several problems appears once per problem).
    """

    n: int
    names: tuple[str, ...]  # benchmark names, indexed by ``benchmark``
    problem_ids: tuple[tuple[str, ...], ...]  # per benchmark its problem ids, indexed by ``problem``
    hashes: np.ndarray
    benchmark: np.ndarray
    problem: np.ndarray
    too_short: tuple[int, ...]  # per benchmark, problems with fewer than n words (unmatchable)
    present: np.ndarray  # [2**k] bool, present[h & (2**k - 1)] for every indexed h: a cheap first test

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """[G] bool: which of ``hashes`` [G] uint64 may be indexed (about 1.5% false positives)."""
        return self.present[(hashes & np.uint64(len(self.present) - 1)).astype(np.intp)]


def build_index(benchmarks: dict[str, list[tuple[str, str]]], n: int) -> NgramIndex:
    """Index ``{name: [(problem id, text), ...]}`` by the word n-grams of every problem text."""
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    parts, owners, problems, too_short = [], [], [], []
    for b, items in enumerate(benchmarks.values()):
        words = [ngram_words(text) for _, text in items]
        hashes, text, _ = batch_ngram_hashes(words, n)
        parts.append(hashes)
        owners.append(np.full(len(hashes), b, np.int32))
        problems.append(text.astype(np.int32))
        too_short.append(sum(len(w) < n for w in words))
    hashes = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    benchmark = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    problem = np.concatenate(problems) if problems else np.zeros(0, np.int32)
    order = np.lexsort((problem, benchmark, hashes))
    size = 1 << min(max(int(64 * len(hashes)).bit_length(), 10), 26)  # >= 64 slots per n-gram, <= 64 MB
    present = np.zeros(size, bool)
    present[(hashes & np.uint64(size - 1)).astype(np.intp)] = True
    return NgramIndex(
        n=n,
        names=tuple(benchmarks),
        problem_ids=tuple(tuple(pid for pid, _ in items) for items in benchmarks.values()),
        hashes=hashes[order],
        benchmark=benchmark[order],
        problem=problem[order],
        too_short=tuple(too_short),
        present=present,
    )


@dataclass(frozen=True)
class Overlap:
    """The first n-gram a text shares with one benchmark."""

    benchmark: str
    problem_id: str
    ngram: str  # its words joined by single spaces


def find_overlaps(index: NgramIndex, texts: Sequence[str]) -> list[dict[str, Overlap]]:
    """Per text, ``{benchmark name: first Overlap}`` for every benchmark it shares an n-gram with."""
    words = [ngram_words(t) for t in texts]
    out: list[dict[str, Overlap]] = [{} for _ in texts]
    if not len(index.hashes):
        return out
    hashes, text, position = batch_ngram_hashes(words, index.n)
    maybe = np.flatnonzero(index.candidates(hashes))
    slot = np.minimum(np.searchsorted(index.hashes, hashes[maybe]), len(index.hashes) - 1)
    for g in maybe[index.hashes[slot] == hashes[maybe]]:  # few: only contaminated texts have any
        t, pos, h = int(text[g]), int(position[g]), hashes[g]
        first = int(np.searchsorted(index.hashes, h))
        for e in range(first, int(np.searchsorted(index.hashes, h, side="right"))):
            b = int(index.benchmark[e])
            name = index.names[b]
            if name not in out[t]:
                ngram = " ".join(words[t][pos : pos + index.n])
                out[t][name] = Overlap(name, index.problem_ids[b][int(index.problem[e])], ngram)
    return out


class PromptDedup:
    """Exact dedup state: which prompts (``normalize_prompt`` keys) and samples were kept so far.

    A row is a *duplicate* when an earlier kept row has the same normalized prompt and the same
    response text (exactly; prompt-only data has response ""), and *over the cap* when its prompt
    already has ``max_responses`` kept responses. So the first row of every prompt is kept, and with
    ``max_responses=1`` only that one. Memory: about 100 bytes per kept sample (two CPython hash tables
    of ints).
    """

    def __init__(self, max_responses: int | None = None):
        if max_responses is not None and max_responses < 1:
            raise ValueError(f"max_responses_per_prompt must be >= 1 or unset, got {max_responses}")
        self.max_responses = max_responses
        self.responses: dict[int, int] = {}  # prompt key -> kept responses
        self.samples: set[int] = set()  # BLAKE2b-64 of (prompt key, response)

    def admit(self, prompt_key: int, response: str) -> str | None:
        """None if the row is kept (and recorded), else why not: "duplicates" or "over_response_cap"."""
        sample = text_hash64(f"{prompt_key:016x}\n{response}")
        if sample in self.samples:
            return "duplicates"
        kept = self.responses.get(prompt_key, 0)
        if self.max_responses is not None and kept >= self.max_responses:
            return "over_response_cap"
        self.samples.add(sample)
        self.responses[prompt_key] = kept + 1
        return None
