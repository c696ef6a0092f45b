"""scripts/run_phase.sh, one phase of scripts/gpu_run.sh on the GPU machine: the phase's limit holds
even when the command leaves a process behind, and its log's tail comes back, filtered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PHASE = str(ROOT / "scripts" / "run_phase.sh")


def _run_phase(out: Path, limit: int, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(["bash", RUN_PHASE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(out), "PHASE_TIMEOUT": str(limit)})
    return done, time.monotonic() - start


def test_a_phase_ends_at_its_limit_though_its_command_left_a_process_holding_the_output(tmp_path):
    # the child in a session of its own keeps the phase's stdout open for 30 s (as bench/experience.py's
    # spinners did on 2026-12-04, when a pipe through tee then waited to the call's end)
    script = f"setsid sleep 30 & echo $! > {tmp_path}/orphan; echo started; sleep 20; echo never"
    done, seconds = _run_phase(tmp_path, 2, "phase.log", "", "5", "bash", "-c", script)
    try:
        assert seconds < 10, f"the phase took {seconds:.1f} s against its 2 s limit"
        assert done.returncode == 124
        assert done.stdout.splitlines() == ["started", "stopped at PHASE_TIMEOUT=2 s"]
        assert (tmp_path / "phase.log").read_text() == "started\n"
    finally:
        subprocess.run(["kill", (tmp_path / "orphan").read_text().strip()], check=False)


def test_a_phase_returns_its_commands_status_and_the_logs_tail_without_the_noise(tmp_path):
    (tmp_path / "phase.log").write_text("from an earlier phase\n")
    script = "for i in 1 2 3 4; do echo kept $i; echo INFO noise $i; done; exit 3"
    done, _ = _run_phase(tmp_path, 30, "phase.log", "^INFO", "3", "bash", "-c", script)
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["kept 2", "kept 3", "kept 4"]
    assert (tmp_path / "phase.log").read_text().count("INFO noise") == 4  # the log keeps everything, appended
    assert (tmp_path / "phase.log").read_text().startswith("from an earlier phase\n")


def test_a_plan_runs_its_phases_in_turn_and_skips_what_its_time_does_not_hold(tmp_path):
    """scripts/gpu_run.sh plan FILE: each "SECONDS PHASE [arguments]" line in turn (a bad one does not
    stop the rest), within PHASE_TIMEOUT in all. Run here on the CPU with the machine's preparation
    (the GPU stack's install) marked done, as it is for a plan's own phases."""
    plan = tmp_path / "plan.txt"
    plan.write_text("# the thread A/B, tiny\n"
                    "60 experience --prompts 2 --group 2 --max-len 64 --repeats 1\n"
                    "\n"
                    "5 nosuchphase\n")
    env = {**os.environ, "OUT": str(tmp_path), "GPU_RUN_READY": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "scripts/gpu_run.sh", "plan", str(plan)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**env, "PHASE_TIMEOUT": "100"})
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [line.split(" ", 2)[2] for line in done.stdout.splitlines() if line.startswith("== ")]
    assert ran == ["60 experience --prompts 2 --group 2 --max-len 64 --repeats 1", "rc=0", "5 nosuchphase", "rc=2"]
    assert json.loads((tmp_path / "experience.log").read_text().splitlines()[-1])["responses"] == 4
    late = subprocess.run(["bash", "scripts/gpu_run.sh", "plan", str(plan)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**env, "PHASE_TIMEOUT": "10"})
    skipped = [re.sub(r"\d+ s left", "N s left", line) for line in late.stdout.splitlines() if line.startswith("== ")]
    assert skipped == ["== skipped, N s left: 60 experience --prompts 2 --group 2 --max-len 64 --repeats 1",
                       "== skipped, N s left: 5 nosuchphase"]


def test_a_wait_call_needs_no_preparation_and_brings_the_detached_logs_back(tmp_path):
    """scripts/gpu_run.sh wait: no install check or imports before it (they took 14 s of each wait call
    on the GPU machine); it waits for what start left running and copies its logs to $OUT. Run from a
    copy of scripts/ with no GPU stack beside it, where any preparation would fail."""
    work, out = tmp_path / "checkout", tmp_path / "out"
    (work / "scripts").mkdir(parents=True)
    out.mkdir()
    for script in ("gpu_run.sh", "detach.sh", "run_phase.sh"):
        (work / "scripts" / script).write_text((ROOT / "scripts" / script).read_text())
    env = {**os.environ, "DETACHED_DIR": str(tmp_path / "detached"), "OUT": str(out)}
    started = subprocess.run(["bash", "scripts/detach.sh", "start", str(tmp_path / "detached"), "bash", "-c",
                              f"mkdir -p {tmp_path}/detached_out; echo measured > {tmp_path}/detached_out/bench.log"],
                             cwd=work, capture_output=True, text=True, timeout=30, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    waited = subprocess.run(["bash", "scripts/gpu_run.sh", "wait"], cwd=work, capture_output=True, text=True,
                            timeout=30, env={**env, "PHASE_TIMEOUT": "10"})
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "finished: rc=0" in waited.stdout and "stack incomplete" not in waited.stdout
    assert (out / "bench.log").read_text() == "measured\n"
