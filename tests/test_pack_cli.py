"""The pack job and its CLI: every token kept, masks aligned, over-long and malformed rows counted,
inputs in every format, and resumption after a kill equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from data_prep.pack import main
from nemo_ext.data.shards import HISTOGRAM_PNG, METADATA, PackedDataset, iter_bins, shard_name
from nemo_ext.data.sources import ChatFields, MalformedRowError, open_rows
from nemo_ext.data.tokenize import tokenize_chat
from nemo_ext.prep.pack_job import STATE, PackConfig, pack_dataset
from tests.helpers import write_jsonl
from tests.test_packing import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return build_char_tokenizer(tmp_path_factory.mktemp("chartok"))


def make_rows(n: int, seed: int = 0, max_output: int = 600) -> list[dict]:
    """Chat rows of the paper's SFT layout with long-tailed output lengths (in characters = tokens)."""
    rng = random.Random(seed)
    text = lambda k: "".join(rng.choice("abcdefgh ") for _ in range(k))
    reasoning = lambda: text(min(int(rng.lognormvariate(4.5, 0.8)), max_output))
    return [
        {
            "input": f"Q{i}: {text(rng.randint(5, 60))}",
            "output": f"<think>\n{reasoning()}</think> \\boxed{{{i}}}",
            "category": rng.choice(["math", "code"]),
            "source": "synthetic",
        }
        for i in range(n)
    ]


def sequences(directory) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Unpack every bin of a pack into its (token ids, loss mask) sequences."""
    out = []
    for b in iter_bins(directory):
        bounds = b["seq_start_id"].tolist() + [len(b["input_ids"])]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            out.append((tuple(b["input_ids"][lo:hi].tolist()), tuple(b["loss_mask"][lo:hi].tolist())))
    return out


def reference(tok_path: str, rows: list[dict], max_len: int | None = None) -> Counter:
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    out = Counter()
    for r in rows:
        s = tokenize_chat(tokenizer, r["input"], r["output"], r["category"]).truncated(max_len or 10**9)
        out[(tuple(s.input_ids.tolist()), tuple(s.loss_mask.tolist()))] += 1
    return out


def test_pack_keeps_every_token_and_aligns_masks(tmp_path, tok_path):
    rows = make_rows(230)
    src = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = PackConfig(str(src), str(tmp_path / "out"), tok_path, 1024, bins_per_shard=4, buffer_samples=100)
    meta = pack_dataset(cfg, progress=False)

    assert Counter(sequences(cfg.output)) == reference(tok_path, rows)
    ds = PackedDataset(cfg.output)
    bins = list(iter_bins(cfg.output))
    assert len(ds) == len(bins) == meta["counts"]["bins"] == sum(s["bins"] for s in meta["shards"])
    assert all(len(b["input_ids"]) <= 1024 and b["seq_start_id"][0] == 0 for b in bins)
    assert all((ds[i]["input_ids"] == bins[i]["input_ids"]).all() for i in range(len(ds)))
    tokens = sum(len(ids) for ids, _ in sequences(cfg.output))
    loss_tokens = sum(sum(mask) for _, mask in sequences(cfg.output))
    assert meta["counts"] == dict(read=230, packed=230, truncated=0, dropped=0, malformed=0,
                                  bins=len(bins), tokens=tokens, loss_tokens=loss_tokens)  # fmt: skip
    assert meta["packing_efficiency"] == pytest.approx(tokens / (len(bins) * 1024))
    assert sum(meta["length_histogram"]["counts"]) == 230 and meta["length_histogram"]["over_bin_size"] == 0
    # 3 buffers (100, 100, 30 rows), each written as shards of <= 4 bins.
    assert all(s["bins"] <= 4 for s in meta["shards"]) and len(meta["shards"]) >= 3
    assert (tmp_path / "out" / HISTOGRAM_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlong_samples_truncated_or_dropped_and_counted(tmp_path, tok_path, policy):
    rows = make_rows(40, max_output=150)
    for i in (3, 17, 29):
        rows[i]["output"] = "x" * 700  # prompt (~200 tokens) + 701 response tokens > 512
    rows[8]["input"] = "y" * 600  # the prompt alone is longer than a bin: dropped under both policies
    src = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = PackConfig(str(src), str(tmp_path / policy), tok_path, bin_size=512, overlong=policy)
    counts = pack_dataset(cfg, progress=False)["counts"]

    kept = rows if policy == "truncate" else [r for i, r in enumerate(rows) if i not in (3, 17, 29)]
    expected = reference(tok_path, [r for r in kept if r is not rows[8]], max_len=512)
    assert Counter(sequences(cfg.output)) == expected
    n_cut = 3 if policy == "truncate" else 0
    assert (counts["truncated"], counts["dropped"], counts["packed"]) == (n_cut, 4 - n_cut, 36 + n_cut)
    assert counts["read"] == counts["packed"] + counts["dropped"] + counts["malformed"] == 40


def test_malformed_rows_are_reported_with_file_and_line_and_counted(tmp_path, tok_path, caplog):
    rows = make_rows(12)
    rows[4] = {"input": "q", "category": "math"}  # line 6 (after the raw line 3): no output
    rows[6]["input"] = 42  # line 8
    rows[9]["category"] = "physics"  # line 11
    src = write_jsonl(tmp_path / "sft.jsonl", rows, raw_lines={3: "{not json", 14: "", 15: "[1, 2]"})
    meta = pack_dataset(PackConfig(str(src), str(tmp_path / "out"), tok_path, bin_size=1024), progress=False)

    expected = [
        f"{src}:3: not valid JSON",
        f"{src}:6: missing field 'output' (expected a string; fields present: input, category)",
        f"{src}:8: field 'input' is int, expected a string",
        f"{src}:11: field 'category' is 'physics', expected one of ('math', 'code')",
        f"{src}:15: expected a JSON object, got list",
    ]
    assert len(meta["malformed_examples"]) == 5
    for message, want in zip(meta["malformed_examples"], expected, strict=True):
        assert message.startswith(want)
        assert any(want in r.getMessage() for r in caplog.records)
    # 14 non-blank lines: 13 rows + "[1, 2]"; the blank line 14 is not a row.
    assert meta["counts"]["read"] == 14 and meta["counts"]["malformed"] == 5 and meta["counts"]["packed"] == 9


def test_strict_stops_at_the_first_malformed_row(tmp_path, tok_path):
    src = write_jsonl(tmp_path / "sft.jsonl", make_rows(5), raw_lines={4: '{"input": "q"}'})
    with pytest.raises(MalformedRowError, match=f"^{src}:4: missing field 'output'"):
        cfg = PackConfig(str(src), str(tmp_path / "out"), tok_path, bin_size=1024, strict=True)
        pack_dataset(cfg, progress=False)


def test_parquet_directory_and_saved_dataset_inputs_pack_like_jsonl(tmp_path, tok_path):
    rows = make_rows(60)
    renamed = [{"question": r["input"], "answer": r["output"], "kind": r["category"]} for r in rows]
    fields = ChatFields(prompt="question", response="answer", task="kind")
    os.mkdir(tmp_path / "parts")
    pq.write_table(pa.Table.from_pylist(renamed[25:]), tmp_path / "parts" / "b.parquet")
    pq.write_table(pa.Table.from_pylist(renamed[:25]), tmp_path / "parts" / "a.parquet", row_group_size=10)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(renamed)}).save_to_disk(tmp_path / "saved")
    want = reference(tok_path, rows)
    for name, src in [("file", tmp_path / "parts"), ("saved", tmp_path / "saved")]:
        cfg = PackConfig(str(src), str(tmp_path / name), tok_path, 1024, fields=fields, buffer_samples=7)
        pack_dataset(cfg, progress=False)
        assert Counter(sequences(cfg.output)) == want

    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), tmp_path / "bad.parquet")
    cfg = PackConfig(str(tmp_path / "bad.parquet"), str(tmp_path / "bad"), tok_path, 1024, fields=fields)
    why = f"{tmp_path}/bad.parquet row 0: missing field 'answer' (expected a string; columns of the file: question)"
    with pytest.raises(ValueError, match="first malformed: " + re.escape(why)):
        pack_dataset(cfg, progress=False)


def test_resumed_reads_skip_to_the_same_rows_in_every_format(tmp_path):
    rows = make_rows(45)
    for d in ("jsonl", "parquet"):
        os.mkdir(tmp_path / d)
    write_jsonl(tmp_path / "jsonl" / "a.jsonl", rows[:20])
    write_jsonl(tmp_path / "jsonl" / "b.jsonl", rows[20:], raw_lines={2: "   "})  # a blank line 2
    pq.write_table(pa.Table.from_pylist(rows[:23]), tmp_path / "parquet" / "a.parquet", row_group_size=10)
    pq.write_table(pa.Table.from_pylist(rows[23:]), tmp_path / "parquet" / "b.parquet", row_group_size=10)
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    for src in ("jsonl", "parquet", "saved"):
        for skip in (0, 7, 10, 20, 21, 25, 45, 50):
            got, total = open_rows(str(tmp_path / src), ["input"], skip=skip)
            assert [r.record["input"] for r in got] == [r["input"] for r in rows[skip:]]
            assert total == (None if src == "jsonl" else 45)
    located = [r.location for r in open_rows(str(tmp_path / "jsonl"), ["input"], skip=19)[0]][:3]
    assert located == [f"{tmp_path}/jsonl/{where}" for where in ("a.jsonl:20", "b.jsonl:1", "b.jsonl:3")]


def test_cli_resume_after_failure_mid_buffer_equals_uninterrupted_run(tmp_path, tok_path):
    src = write_jsonl(tmp_path / "sft.jsonl", make_rows(80))
    args = ["--input", str(src), "--tokenizer", tok_path, "--bin-size", "700", "--bins-per-shard", "1",
            "--no-progress"]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    (out / shard_name(3)).mkdir(parents=True)  # writing shard 3 of the single buffer fails
    assert main([*args, "--output", str(out)]) == 1
    state = json.loads((out / STATE).read_text())
    assert (state["buffer"], state["shards_in_buffer"], state["complete"]) == (0, 3, False)
    written = {i: (out / shard_name(i)).stat().st_mtime_ns for i in range(3)}

    (out / shard_name(3)).rmdir()
    assert main([*args, "--output", str(out)]) == 0
    assert {i: (out / shard_name(i)).stat().st_mtime_ns for i in range(3)} == written  # not redone
    assert_same_pack(out, tmp_path / "ref")


def assert_same_pack(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / METADATA).read_text()), json.loads((b / METADATA).read_text())
    assert ma == mb
    for x, y in zip(iter_bins(a), iter_bins(b), strict=True):
        assert all((x[k] == y[k]).all() for k in x)
    assert sorted(p.name for p in a.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in b.iterdir() if not p.name.startswith(".")
    )


def test_cli_resume_after_sigkill_equals_uninterrupted_run(tmp_path, tok_path):
    """Kill -9 a real CLI process mid-stream, rerun the same command, compare with a clean run.

    The input is a FIFO fed two buffers' worth of rows, so the process is blocked reading the third
    buffer (not finished by luck) when it is killed; then the FIFO is replaced by the full file.
    """
    lines = [json.dumps(r) + "\n" for r in make_rows(250)]
    src, out = tmp_path / "sft.jsonl", tmp_path / "out"
    os.mkfifo(src)
    args = ["--input", str(src), "--output", str(out), "--tokenizer", tok_path, "--bin-size", "1024",
            "--buffer-samples", "100", "--bins-per-shard", "8", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "data_prep/pack.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        fd = _open_fifo_for_writing(src, proc)
        os.write(fd, "".join(lines[:200]).encode())
        state = lambda: json.loads((out / STATE).read_text()) if (out / STATE).exists() else {}
        _wait_for(lambda: state().get("buffer") == 2, proc)
        proc.kill()
        assert proc.wait(timeout=30) == -9
        os.close(fd)
    finally:
        proc.kill()
    assert not (out / METADATA).exists()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert written

    src.unlink()
    src.write_text("".join(lines))
    assert main(args) == 0
    assert {n: (out / n).stat().st_mtime_ns for n in written} == written  # resumed, not redone
    assert main([*args[:2], "--output", str(tmp_path / "ref"), *args[4:]]) == 0
    assert_same_pack(out, tmp_path / "ref")
    assert json.loads((out / METADATA).read_text())["counts"]["read"] == 250


def _open_fifo_for_writing(path: Path, proc: subprocess.Popen) -> int:
    """Open the FIFO once the child has opened it for reading (without hanging if the child died)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError:  # ENXIO: no reader yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pack.py never read its input: {proc.stderr.read().decode()}") from None
            time.sleep(0.05)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"pack.py did not reach the expected state: {proc.stderr.read().decode()}")
        time.sleep(0.02)


def test_rerun_with_other_settings_is_refused_and_finished_run_is_kept(tmp_path, tok_path, capsys):
    src = write_jsonl(tmp_path / "sft.jsonl", make_rows(10))
    args = ["--input", str(src), "--output", str(tmp_path / "out"), "--tokenizer", tok_path, "--no-progress"]
    assert main([*args, "--bin-size", "1024"]) == 0
    mtime = (tmp_path / "out" / shard_name(0)).stat().st_mtime_ns
    assert main([*args, "--bin-size", "1024"]) == 0
    assert (tmp_path / "out" / shard_name(0)).stat().st_mtime_ns == mtime
    assert main([*args, "--bin-size", "2048"]) == 1
    assert "bin_size: 1024 then, 2048 now" in capsys.readouterr().err


def test_hub_name_offline_gives_a_clear_error(tmp_path, tok_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "data_prep/pack.py", "--input", "nvidia/AceReason-1.1-SFT", "--output",
           str(tmp_path / "out"), "--tokenizer", tok_path, "--bin-size", "1024"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "'nvidia/AceReason-1.1-SFT' is not a local file or directory" in result.stderr
    assert "Offline?" in result.stderr
