"""scripts/detach.sh: a command started in its own process session outlives the process group that
started it (what the device tool kills when a call returns), and ``wait`` reports its end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETACH = str(ROOT / "scripts" / "detach.sh")


def _wait(run_dir: Path, seconds: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", DETACH, "wait", str(run_dir), str(seconds)], capture_output=True, text=True)


def test_a_detached_command_outlives_the_group_that_started_it(tmp_path):
    run_dir = tmp_path / "run"
    # the starter's whole process group is killed at once, as the device tool does at a call's end
    starter = subprocess.Popen(["bash", "-c", f"bash {DETACH} start {run_dir} bash -c 'sleep 2; echo done-by-itself; "
                                              "exit 3'; sleep 60"],
                               start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert "started in its own session" in starter.stdout.readline()
    os.killpg(starter.pid, signal.SIGKILL)
    starter.wait()
    waited = _wait(run_dir, 30)
    assert waited.returncode == 0 and waited.stdout.strip() == "finished: rc=3"
    assert (run_dir / "log").read_text() == "done-by-itself\n"


def test_wait_says_a_command_still_runs_and_nothing_started(tmp_path):
    run_dir = tmp_path / "run"
    started = subprocess.run(["bash", DETACH, "start", str(run_dir), "sleep", "30"], capture_output=True, text=True)
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    try:
        begin = time.monotonic()
        waited = _wait(run_dir, 2)
        assert waited.returncode == 1 and waited.stdout.strip() == "still running"
        assert time.monotonic() - begin < 10
        assert not (run_dir / "done").exists()
    finally:
        os.killpg(pid, signal.SIGKILL)  # the session leader's pid is its process group's
    assert _wait(tmp_path / "never", 1).returncode == 2
