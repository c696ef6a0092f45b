"""One run per output: a second run into an output another live process holds is refused at start,
naming the holder's PID and host; the lock of a run killed with SIGKILL is taken over with a warning.
Every entry path (SFT, RL, pack, curate, RL prompts, evaluation) is tried against a real holder process."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_ext.output_lock import OutputLock, OutputLocked, lock_file
from tests.helpers import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time\nfrom nemo_ext.output_lock import OutputLock\nlock = OutputLock(sys.argv[1])\n" \
       "print('held', flush=True)\ntime.sleep(600)"


@contextlib.contextmanager
def held_elsewhere(output: Path):
    """Another process holding the lock of ``output`` until the block ends; yields its Popen."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def holder_of(proc) -> str:
    return f"PID {proc.pid} on host {socket.gethostname()}"


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    with held_elsewhere(out) as proc:
        with pytest.raises(OutputLocked, match=holder_of(proc)):
            OutputLock(out)
        with pytest.raises(OutputLocked, match=holder_of(proc)):
            OutputLock(tmp_path / "." / "run")  # another spelling of the same path
        OutputLock(tmp_path / "other").release()  # other outputs are free
    assert not out.exists()  # taking the lock creates nothing in the output


def test_a_killed_holders_lock_is_taken_over_with_a_message(tmp_path, caplog):
    out = tmp_path / "run"
    with held_elsewhere(out) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert json.loads(lock_file(out).read_text())["pid"] == proc.pid  # left behind
        with caplog.at_level(logging.WARNING, logger="nemo_ext.output_lock"):
            lock = OutputLock(out)
    assert "taking over a stale lock" in caplog.text and holder_of(proc) in caplog.text
    assert json.loads(lock_file(out).read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file(out).exists()  # released: nothing left beside the output


def test_the_lock_is_reentrant_within_a_process_and_released_with_the_last_holder(tmp_path):
    out = tmp_path / "run"
    with OutputLock(out), OutputLock(out):
        assert lock_file(out).exists()
    assert not lock_file(out).exists()
    with OutputLock(out, enabled=False):  # the other ranks of a distributed run hold nothing
        assert not lock_file(out).exists()


class ReachedWork(Exception):
    """Raised where a refused run would have started working."""


def _reached(*args, **kwargs):
    raise ReachedWork


def test_sft_refuses_an_output_dir_in_use(tmp_path, monkeypatch):
    from nemo_ext.sft import loop
    from tests.test_sft_run import SMALL, sft_config

    monkeypatch.setattr(loop, "prepare_model", _reached)
    out = tmp_path / "sft"
    with held_elsewhere(out) as proc, pytest.raises(OutputLocked, match=holder_of(proc)):
        loop.run_sft(sft_config([*SMALL, f"output_dir={out}"]))
    with pytest.raises(ReachedWork):  # free again
        loop.run_sft(sft_config([*SMALL, f"output_dir={out}"]))


def test_rl_refuses_an_output_dir_in_use(tmp_path, monkeypatch):
    from nemo_ext.rl import grpo
    from tests.test_rl_config import rl_config

    monkeypatch.setattr(grpo, "build_run", _reached)
    out = tmp_path / "rl"
    with held_elsewhere(out) as proc, pytest.raises(OutputLocked, match=holder_of(proc)):
        grpo.train(rl_config("rl/tiny", [f"output_dir={out}"]))
    with pytest.raises(ReachedWork):
        grpo.train(rl_config("rl/tiny", [f"output_dir={out}"]))


def _data_job_commands(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": "What is 1 + 1?", "output": "2", "answer": "2",
                                                   "problem": "What is 1 + 1?"}])
    return {
        "pack": ["data_prep/pack.py", "--input", str(rows), "--output", str(out), "--tokenizer", "unused",
                 "--bin-size", "64", "--no-progress"],
        "curate": ["data_prep/curate.py", "--input", str(rows), "--output", str(out), "--no-progress"],
        "rl_prompts": ["data_prep/rl_prompts.py", "--task", "math", "--input", str(rows), "--output", str(out),
                       "--no-progress"],
    }


@pytest.mark.parametrize("job", ["pack", "curate", "rl_prompts"])
def test_data_jobs_refuse_an_output_in_use(tmp_path, job):
    out = tmp_path / "out"
    command = _data_job_commands(tmp_path, out)[job]
    with held_elsewhere(out) as proc:
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1
    assert holder_of(proc) in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_evaluation_refuses_an_output_dir_in_use(tmp_path, capsys, tiny_model_dir):
    from nemo_ext.evaluation.cli import main

    out = tmp_path / "eval"  # a real checkpoint: the preflight passes, the lock refuses
    with held_elsewhere(out) as proc:
        for command in ("generate", "score"):
            assert main([command, str(tiny_model_dir), "embedded", f"output_dir={out}"]) == 1
            assert holder_of(proc) in capsys.readouterr().err
    assert not out.exists()
