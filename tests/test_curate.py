"""Curation: exact prompt dedup, word n-gram decontamination, difficulty balancing, and the CLI end to end
(its output packed by data_prep/pack.py)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.curate import main as curate_main
from data_prep.pack import main as pack_main
from nemo_ext.data.curate_balance import approx_tokens, balance, level_of, multiplicities
from nemo_ext.data.curate_text import (
    POLY,
    PromptDedup,
    batch_ngram_hashes,
    build_index,
    find_overlaps,
    ngram_words,
    normalize_prompt,
)
from nemo_ext.data.sources import ChatFields, MalformedRowError
from nemo_ext.prep import curate as curate_job
from nemo_ext.prep.curate import METADATA, BenchmarkSources, CurateConfig, curate
from tests.helpers import write_jsonl
from tests.test_packing import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]
AIME24 = REPO / "tests" / "fixtures" / "eval" / "aime24.jsonl"
# 20 words; its 9-grams are what contaminates
BENCH = ("Let x and y be positive reals such that the product of their squares equals "
         "seven times the sum of both numbers")


def read_output(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "data").glob("*.jsonl")) for line in f.read_text().splitlines()]


def config(tmp_path: Path, rows: list[dict], **kw) -> CurateConfig:
    kw.setdefault("balance_unit", "none")
    kw.setdefault("decontaminate", "none")
    return CurateConfig(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), **kw)


# ---- normalization and dedup ----------------------------------------------------------------------


def test_normalize_prompt_hand_examples():
    assert normalize_prompt("  What\tIS\n\n2+2? ") == "what is 2+2?"
    assert normalize_prompt("\ufb01nd ＡＢＣ") == "find abc"  # NFKC: ligature and full-width letters
    assert normalize_prompt("Straße\u00a0") == "strasse"  # casefold, no-break space is whitespace
    assert normalize_prompt("a b") != normalize_prompt("ab")


def test_dedup_keeps_exactly_the_first_of_normalized_equal_prompts(tmp_path):
    rows = [
        {"input": "What is 2+2?", "output": "four", "id": 0},
        {"input": "Other question", "output": "o", "id": 1},
        {"input": "  what IS\t2+2? ", "output": "4", "id": 2},
        {"input": "WHAT is 2+2?", "output": "FOUR", "id": 3},
        {"input": "What is 2 + 2?", "output": "four", "id": 4},  # other spacing inside: another prompt
    ]
    meta = curate(config(tmp_path, rows, max_responses_per_prompt=1), progress=False)
    assert [r["id"] for r in read_output(tmp_path / "out")] == [0, 1, 4]
    assert meta["counts"]["over_response_cap"] == 2 and meta["counts"]["duplicates"] == 0

    # no cap: every distinct response is kept, an exact repeat of a (prompt, response) is not
    rows.append({"input": "what is 2+2?", "output": "4", "id": 5})
    meta = curate(config(tmp_path, rows), progress=False)
    assert [r["id"] for r in read_output(tmp_path / "out")] == [0, 1, 2, 3, 4]
    assert meta["counts"]["duplicates"] == 1 and meta["counts"]["unique_prompts"] == 3


def test_dedup_cap_of_two_responses():
    dedup = PromptDedup(max_responses=2)
    got = [dedup.admit(k, r) for k, r in [(1, "a"), (1, "a"), (1, "b"), (2, "a"), (1, "c")]]
    assert got == [None, "duplicates", None, None, "over_response_cap"]
    with pytest.raises(ValueError, match="max_responses_per_prompt"):
        PromptDedup(0)


# ---- n-gram decontamination -----------------------------------------------------------------------


def test_ngram_hash_is_the_documented_polynomial():
    words = ngram_words("The $9$-kilometer walk, ＴＡＫＥＳ 4 hours")
    assert words == ["the", "9", "kilometer", "walk", "takes", "4", "hours"]
    word = lambda w: int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
    expected = [sum(word(words[i + j]) * int(POLY) ** (2 - j) for j in range(3)) % 2**64 for i in range(5)]
    hashes, text, position = batch_ngram_hashes([words[:2], words], 3)  # the 2-word text has no 3-gram
    assert hashes.tolist() == expected and text.tolist() == [1] * 5 and position.tolist() == list(range(5))


def test_decontamination_removes_copies_and_9gram_paraphrases_but_not_8_words(tmp_path):
    w = BENCH.split()
    rows = [
        {"input": BENCH.upper() + "!", "output": "a", "id": "copy"},
        {"input": f"Suppose {' '.join(w[6:15])}, then what", "output": "b", "id": "one 9-gram"},
        {"input": f"Suppose {' '.join(w[6:14])} banana {' '.join(w[15:])}", "output": "c", "id": "8 words"},
        {"input": "An unrelated question about primes", "output": f"{BENCH}", "id": "response only"},
    ]
    bench = write_jsonl(tmp_path / "olympiad.jsonl", [{"problem": "Tiny one"}, {"problem": BENCH}])
    sources = BenchmarkSources(files=(str(bench),))
    meta = curate(config(tmp_path, rows, decontaminate="prompt", benchmarks=sources), progress=False)
    assert [r["id"] for r in read_output(tmp_path / "out")] == ["8 words", "response only"]
    report = meta["benchmarks"]["olympiad"]
    assert (report["contaminated"], report["problems"], report["too_short"]) == (2, 2, 1)
    assert report["examples"][1] == {"row": f"{tmp_path / 'in.jsonl'}:2", "problem": f"{bench}:2",
                                     "ngram": " ".join(w[6:15]).lower()}
    assert meta["counts"]["contaminated"] == 2

    # n = 14 (the paper's RL code setting) keeps the 9-gram paraphrase; "both" also checks responses
    meta = curate(config(tmp_path, rows, decontaminate="both", ngram=14, benchmarks=sources), progress=False)
    assert [r["id"] for r in read_output(tmp_path / "out")] == ["one 9-gram", "8 words"]


def test_overlaps_equal_a_naive_set_of_tuples():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(12)]  # small vocabulary: many chance overlaps
    text = lambda k: " ".join(rng.choice(vocab) for _ in range(k))
    benchmarks = {"a": [(str(i), text(rng.randint(3, 30))) for i in range(20)],
                  "b": [(str(i), text(rng.randint(3, 30))) for i in range(20)]}
    samples = [text(rng.randint(0, 40)) for _ in range(300)]
    n = 4
    grams = lambda t: {tuple(t.split()[i : i + n]) for i in range(len(t.split()) - n + 1)}
    naive = {name: set().union(*(grams(t) for _, t in items)) for name, items in benchmarks.items()}
    got = find_overlaps(build_index(benchmarks, n), samples)
    expected = [{name for name, g in naive.items() if grams(s) & g} for s in samples]
    assert [set(o) for o in got] == expected
    assert 30 < sum(map(bool, expected)) < 270  # both outcomes are exercised
    for o, s in zip(got, samples, strict=True):
        assert all(tuple(hit.ngram.split()) in grams(s) & naive[name] for name, hit in o.items())


def test_registry_benchmarks_load_through_the_eval_loaders(tmp_path):
    rows = [{"input": "Every morning Aya goes for a 9-kilometer-long walk. How fast?", "output": "x"},
            {"input": "Nothing to see here", "output": "y"}]
    sources = BenchmarkSources(names=("aime24", "embedded"), overrides=(f"benchmarks.aime24.source.path={AIME24}",))
    meta = curate(config(tmp_path, rows, decontaminate="prompt", benchmarks=sources), progress=False)
    assert meta["benchmarks"]["aime24"]["contaminated"] == 1 and meta["counts"]["written"] == 1
    assert meta["benchmarks"]["embedded"]["problems"] == 100
    with pytest.raises(KeyError, match="unknown benchmark 'aime26'"):
        curate(config(tmp_path, rows, decontaminate="prompt", benchmarks=BenchmarkSources(names=("aime26",))))


def test_benchmark_file_without_the_field_names_file_and_line(tmp_path):
    bench = write_jsonl(tmp_path / "b.jsonl", [{"problem": BENCH}, {"question": BENCH}])
    with pytest.raises(MalformedRowError, match=rf"{bench}:2: missing field 'problem'"):
        curate(config(tmp_path, [{"input": "q", "output": "r"}], decontaminate="prompt",
                      benchmarks=BenchmarkSources(files=(str(bench),))), progress=False)


# ---- difficulty balancing -------------------------------------------------------------------------


def test_levels_put_an_edge_length_in_the_lower_level():
    assert level_of(np.array([0, 2048, 2049, 8192, 8193, 16385]), (2048, 8192, 16384)).tolist() == [0, 0, 1, 1, 2, 3]
    assert approx_tokens(["", "abcd", "abcde"]).tolist() == [0, 1, 2]


def test_thinning_and_resampling_hit_their_targets_and_follow_the_seed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6000, size=5000)
    levels = level_of(lengths, (2048, 4096))
    copies, report = balance(lengths, (2048, 4096), (0.3, 1.0, 2.5), seed=7)
    for k, target in enumerate((0.3, 1.0, 2.5)):
        n = int((levels == k).sum())
        assert abs(copies[levels == k].sum() - target * n) <= 0.5  # exact up to rounding one unit
    assert set(copies[levels == 0].tolist()) == {0, 1} and set(copies[levels == 2].tolist()) == {2, 3}
    assert [r["samples_after"] for r in report] == [int(copies[levels == k].sum()) for k in range(3)]
    again, _ = balance(lengths, (2048, 4096), (0.3, 1.0, 2.5), seed=7)
    other, _ = balance(lengths, (2048, 4096), (0.3, 1.0, 2.5), seed=8)
    assert np.array_equal(copies, again) and not np.array_equal(copies, other)


def test_prompt_balancing_keeps_or_drops_all_responses_of_a_prompt():
    groups = np.array([5, 5, 9, 9, 9, 7], np.uint64)
    lengths = np.array([100, 300, 5000, 1, 1, 3000])  # means: 200 (level 0), 1667 (0), 3000 (1)
    copies = multiplicities(np.array([0, 0, 1]), (0.5, 1.0), seed=0)
    assert sorted(copies.tolist()) == [0, 1, 1]
    got, report = balance(lengths, (2048,), (0.5, 1.0), seed=0, groups=groups)
    assert got[0] == got[1] and got[2] == got[3] == got[4] and got[5] == 1 and got[:5].sum() in (2, 3)
    assert report[0]["units_before"] == 2 and report[0]["units_after"] == 1


# ---- the job and the CLI --------------------------------------------------------------------------


def test_malformed_rows_are_reported_with_file_and_line(tmp_path):
    rows = [{"input": f"q{i}", "output": "r", "category": "math"} for i in range(4)]
    rows[2] = {"input": "q2", "category": "math"}
    path = write_jsonl(tmp_path / "in.jsonl", rows, raw_lines={2: "{not json", 4: "", 6: '"a string"'})
    cfg = CurateConfig(input=str(path), output=str(tmp_path / "out"), balance_unit="none", decontaminate="none")
    meta = curate(cfg, progress=False)
    # lines: 1 ok, 2 bad JSON, 3 ok, 4 blank (not a row), 5 no output, 6 not an object, 7 ok
    assert meta["counts"]["read"] == 6 and meta["counts"]["malformed"] == 3 and meta["counts"]["written"] == 3
    assert [m.split(": ")[0] for m in meta["malformed_examples"]] == [f"{path}:{n}" for n in (2, 5, 6)]
    assert "missing field 'output'" in meta["malformed_examples"][1]
    with pytest.raises(MalformedRowError, match=rf"{path}:2: not valid JSON"):
        curate(CurateConfig(**{**cfg.__dict__, "strict": True}), progress=False)


def test_a_failed_run_leaves_no_output_and_foreign_dirs_are_not_replaced(tmp_path, monkeypatch):
    cfg = config(tmp_path, [{"input": "q", "output": "r"}])
    curate(cfg, progress=False)
    before = (tmp_path / "out" / METADATA).read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(curate_job, "write_histogram_png", crash)
    with pytest.raises(RuntimeError):
        curate(CurateConfig(**{**cfg.__dict__, "balance_unit": "sample"}), progress=False)
    assert (tmp_path / "out" / METADATA).read_text() == before  # the old output, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]  # no temporary left
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="is no curation output"):
        curate(CurateConfig(**{**cfg.__dict__, "output": str(tmp_path / "mine")}), progress=False)
    with pytest.raises(ValueError, match="balancing 'none'"):
        CurateConfig(input="x", output="y", fields=ChatFields("problem", ""), balance_unit="prompt")


def test_cli_end_to_end_then_pack(tmp_path, capsys):
    rng = random.Random(0)
    rows = [{"input": f"Question {i} about {rng.random()}", "output": "<think>\n" + "ab " * rng.randint(1, 400)
             + "</think> \\boxed{1}", "category": rng.choice(["math", "code"]), "source": "s"} for i in range(200)]
    rows += [dict(rows[3]), {"input": BENCH, "output": "x", "category": "math", "source": "leak"}]
    path = write_jsonl(tmp_path / "raw.jsonl", rows, raw_lines={50: "[1, 2]"})
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": BENCH}])
    tok = build_char_tokenizer(tmp_path / "tok")
    out = tmp_path / "curated"
    args = ["--input", str(path), "--output", str(out), "--benchmark-file", str(bench), "--benchmark-field",
            "question", "--benchmark", "aime24", "--benchmark-override", f"benchmarks.aime24.source.path={AIME24}",
            "--tokenizer", tok, "--length-edges", "300,900", "--level-factors", "0.5,1,2", "--balance", "sample",
            "--format", "parquet", "--rows-per-shard", "64", "--seed", "3", "--no-progress"]
    assert curate_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    meta = json.loads((out / METADATA).read_text())
    c = meta["counts"]
    assert printed["counts"] == c and printed["contaminated_by_benchmark"] == {"aime24": 0, "bench": 1}
    assert (c["read"], c["malformed"], c["duplicates"], c["contaminated"], c["clean"]) == (203, 1, 1, 1, 200)
    assert c["written"] == c["clean"] - c["thinned"] + c["resampled"]
    assert [(lv["level"], lv["samples_after"]) for lv in meta["levels"]][0][0] == "<= 300"
    assert sum(meta["length_histogram"]["after"]) + meta["length_histogram"]["over_after"] == c["written"]
    assert (out / "length_histogram.png").stat().st_size > 1000
    parts = [pq.read_table(out / p["file"]) for p in meta["parts"]]
    assert [t.num_rows for t in parts] == [p["rows"] for p in meta["parts"]] and max(t.num_rows for t in parts) == 64
    assert sum(t.num_rows for t in parts) == c["written"] and "source" in parts[0].column_names

    packed = tmp_path / "packed"
    assert pack_main(["--input", str(out / "data"), "--output", str(packed), "--tokenizer", tok,
                      "--bin-size", "2048", "--no-progress"]) == 0
    pack_counts = json.loads((packed / METADATA).read_text())["counts"]
    assert pack_counts["packed"] == c["written"] and pack_counts["malformed"] == 0
