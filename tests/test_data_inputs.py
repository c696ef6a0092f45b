"""Data jobs against hostile inputs: an undecodable line is one malformed row (file:line), never the end
of the job; a Parquet file with other column names is reported with the columns it has; a job that
writes nothing exits non-zero with the reason, and pack leaves no empty output directory behind."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.curate import main as curate_main
from data_prep.pack import main as pack_main
from data_prep.rl_prompts import main as rl_prompts_main
from nemo_ext.data.sources import jsonl_objects
from tests.test_packing import build_char_tokenizer

ROWS = [{"input": f"What is {i} + {i}?", "output": f"<think>\nadd</think> \\boxed{{{2 * i}}}", "category": "math",
         "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return build_char_tokenizer(tmp_path_factory.mktemp("chartok"))


def with_latin1_line(path: Path) -> Path:
    """``ROWS`` as JSON Lines with line 3 holding a Latin-1 'é' (byte 0xe9), which is not UTF-8."""
    lines = [json.dumps(r).encode() for r in ROWS]
    lines.insert(2, b'{"input": "caf\xe9", "output": "x", "category": "math"}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def commands(job: str, src: Path, out: Path, tok_path: str) -> list[str]:
    return {"pack": ["--input", str(src), "--output", str(out), "--tokenizer", tok_path, "--bin-size", "256",
                     "--no-progress"],
            "curate": ["--input", str(src), "--output", str(out), "--balance", "none", "--no-progress"],
            "rl_prompts": ["--task", "math", "--input", str(src), "--output", str(out), "--no-progress"]}[job]


MAINS = {"pack": pack_main, "curate": curate_main, "rl_prompts": rl_prompts_main}


@pytest.mark.parametrize("job", ["pack", "curate", "rl_prompts"])
def test_an_undecodable_line_is_one_malformed_row(tmp_path, tok_path, job, capsys, caplog):
    src = with_latin1_line(tmp_path / "rows.jsonl")
    out = tmp_path / "out"
    assert MAINS[job](commands(job, src, out, tok_path)) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["malformed"] == 1
    assert summary["counts"]["packed" if job == "pack" else "written"] == len(ROWS)  # every other row
    assert f"{src}:3: not valid UTF-8 (byte 0xe9 at column 15)" in caplog.text


def test_strict_readers_name_the_undecodable_line(tmp_path):
    src = with_latin1_line(tmp_path / "rows.jsonl")
    with pytest.raises(ValueError, match=f"^{src}:3: not valid UTF-8"):
        list(jsonl_objects(src))


def parquet_with_other_columns(path: Path) -> Path:
    table = pa.Table.from_pylist([{"question": r["input"], "solution": r["output"]} for r in ROWS])
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("job", ["pack", "curate"])
def test_a_parquet_file_with_other_columns_names_them_and_the_job_fails(tmp_path, tok_path, job, capsys):
    src = parquet_with_other_columns(tmp_path / "rows.parquet")
    out = tmp_path / "out"
    assert MAINS[job](commands(job, src, out, tok_path)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{job}: error: {src}: ")
    assert f"{src} row 0: missing field 'input' (expected a string; columns of the file: question, solution)" in error
    assert not out.exists()  # nothing written, no empty directory left


def test_pack_of_only_malformed_rows_fails_with_the_reason_and_leaves_no_directory(tmp_path, tok_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text('{"input": "q"}\n{not json\n')
    out = tmp_path / "out"
    assert pack_main(commands("pack", src, out, tok_path)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"pack: error: {src}: nothing to pack, {out} not written: 2 rows read, 2 malformed")
    assert f"first malformed: {src}:1: missing field 'output'" in error
    assert not out.exists()


def test_pack_with_a_bad_tokenizer_leaves_no_directory(tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out"
    assert pack_main(commands("pack", src, out, str(tmp_path / "no-tokenizer"))) == 1
    assert "could not load a tokenizer" in capsys.readouterr().err
    assert not out.exists()


def test_curate_of_only_malformed_rows_fails_and_keeps_the_old_output(tmp_path, tok_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    bad.write_text('{"input": "q"}\n')
    out = tmp_path / "out"
    assert curate_main(commands("curate", good, out, tok_path)) == 0
    before = sorted(p.name for p in (out / "data").iterdir())
    assert curate_main(commands("curate", bad, out, tok_path)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"curate: error: {bad}: no row left to write, {out} not written (read 1, malformed 1)")
    assert f"first malformed: {bad}:1: missing field 'output'" in error
    assert sorted(p.name for p in (out / "data").iterdir()) == before
