"""Submission, status and waiting: the only module that calls SLURM (sbatch, squeue, scancel).

A stage is complete when its ``DONE`` marker exists (``nemo_ext.launch.marker``); re-running the
launcher submits only the incomplete stages, keeps a stage whose recorded job is still queued or
running instead of submitting it twice, and chains the new jobs with ``--dependency=afterok``. So a
pipeline killed midway (a time-out, a failed stage, a cancelled job) resumes by running the same
command again; each trainer then resumes from its own newest checkpoint.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nemo_ext.io import atomic_write_text
from nemo_ext.launch.marker import DONE, FAILED, JOB, read_marker, write_marker
from nemo_ext.launch.render import Job, render_script, sbatch_argv
from nemo_ext.launch.schema import LaunchConfigError, LauncherConfig

ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
         "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"}
NEVER = "DependencyNeverSatisfied"  # pending forever where a cluster ignores --kill-on-invalid-dep


@dataclass(frozen=True)
class StageState:
    done: dict | None = None  # the DONE marker's record
    failed: dict | None = None  # the FAILED marker's record
    job: str | None = None  # the latest submitted job id (the JOB marker)
    slurm: tuple[str, str] | None = None  # (state, reason) from squeue; None = unknown to SLURM now

    @property
    def alive(self) -> bool:
        return self.slurm is not None and self.slurm[0] in ALIVE and self.slurm[1] != NEVER


def squeue_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` for the ids SLURM still knows (finished jobs for MinJobAge)."""
    def query(chunk: list[str]) -> subprocess.CompletedProcess:
        argv = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", "--jobs=" + ",".join(chunk)]
        try:
            return subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError as err:
            raise RuntimeError("squeue not found: run the launcher where SLURM's commands are (a login node)") from err

    if not ids:
        return {}
    out = query(ids)
    lines = out.stdout.splitlines() if out.returncode == 0 else []
    if out.returncode != 0:  # one purged id fails the whole query: ask one at a time
        lines = [line for i in ids for line in query([i]).stdout.splitlines()]
    states = {}
    for line in lines:
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = (state.strip(), reason.strip())
    return states


def read_states(jobs: list[Job], query: Callable[[list[str]], dict] | None = squeue_states) -> dict[str, StageState]:
    """Each job's markers, and its recorded job's SLURM state (``query=None``: markers only)."""
    marks = {j.name: (read_marker(j.state_dir, DONE), read_marker(j.state_dir, FAILED),
                      (read_marker(j.state_dir, JOB) or {}).get("job")) for j in jobs}
    ids = [m[2] for m in marks.values() if m[2]]
    slurm = query(ids) if query is not None else {}
    return {name: StageState(done, failed, job, slurm.get(job) if job else None)
            for name, (done, failed, job) in marks.items()}


def decide(jobs: list[Job], states: dict[str, StageState], only: list[str] | None = None,
           force: bool = False) -> dict[str, str]:
    """Pure: each stage's action: ``submit``, ``done`` (complete, skipped), ``queued`` (its job is
    still alive: kept) or ``skip`` (not in ``only``). Raises if a stage to submit waits for one that
    is neither complete, queued, nor submitted now."""
    names = [j.name for j in jobs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise LaunchConfigError(f"--only {', '.join(unknown)}: no such enabled stage; stages: {', '.join(names)}")
    actions = {}
    for job in jobs:
        st = states[job.name]
        if only and job.name not in only:
            actions[job.name] = "skip"
        elif st.alive:
            actions[job.name] = "queued"
        elif st.done is not None and not force:
            actions[job.name] = "done"
        else:
            actions[job.name] = "submit"
        if actions[job.name] == "submit":
            for dep in job.deps:
                if actions[dep] == "skip" and states[dep].done is None and not states[dep].alive:
                    raise LaunchConfigError(f"stage {job.name!r} depends on {dep!r}, which is neither complete nor "
                                            f"queued: add `--only {dep}` or leave out --only")
    return actions


def submit(cfg: LauncherConfig, jobs: list[Job], source: str = "launcher.yaml", only: list[str] | None = None,
           force: bool = False, dry_run: bool = False, write_dir: str | None = None,
           echo: Callable[[str], None] = print) -> dict[str, str]:
    """Submit the stages ``decide`` selects, in pipeline order; returns ``{stage: job id}`` of the jobs
    now queued for this pipeline (new and kept). ``dry_run`` prints each script and its sbatch command
    (and writes the scripts to ``write_dir`` if given) without calling SLURM."""
    states = read_states(jobs, query=None if dry_run else squeue_states)
    actions = decide(jobs, states, only, force)
    ids: dict[str, str] = {}
    for job in jobs:
        action, st = actions[job.name], states[job.name]
        if st.alive:
            ids[job.name] = st.job  # dependents wait for the job already queued
        if action == "queued":
            echo(f"{job.name}: job {st.job} still {st.slurm[0].lower()}: kept")
        elif action == "done":
            echo(f"{job.name}: complete (job {st.done.get('job')}): skipped")
        if action != "submit":
            continue
        deps = [ids[d] for d in job.deps if d in ids]  # complete dependencies drop out
        script = render_script(cfg, job, source)
        if dry_run:
            echo(f"# {job.name}: {' '.join(sbatch_argv(job.script_path, deps))}\n{script}")
            if write_dir:
                atomic_write_text(Path(write_dir) / f"{job.name}.sbatch", script)
            ids[job.name] = f"<{job.name}>"
            continue
        if st.job and st.slurm and st.slurm[1] == NEVER:
            subprocess.run(["scancel", st.job], capture_output=True)  # stuck behind a failed dependency
        atomic_write_text(job.script_path, script)  # also creates the state dir, which --output needs
        out = subprocess.run(sbatch_argv(job.script_path, deps), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed for stage {job.name!r} ({job.script_path}): "
                               f"{(out.stderr or out.stdout).strip()}")
        ids[job.name] = out.stdout.strip().split(";")[0]
        write_marker(job.state_dir, JOB, ids[job.name])
        after = f" after {', '.join(deps)}" if deps else ""
        echo(f"{job.name}: submitted job {ids[job.name]}{after}; log {job.log_path(ids[job.name])}")
    return ids


def status_line(job: Job, st: StageState) -> str:
    """Pure: one line saying where a stage stands."""
    if st.done is not None:
        return f"{job.name:<12} complete   job {st.done.get('job')} ({st.done.get('time')})"
    if st.alive:
        return f"{job.name:<12} {st.slurm[0].lower():<10} job {st.job} ({st.slurm[1]})"
    if st.failed is not None and st.failed.get("job") == st.job:
        why = f", SLURM: {st.slurm[0]} ({st.slurm[1]})" if st.slurm and st.slurm[0] != "FAILED" else ""
        return (f"{job.name:<12} FAILED     job {st.job} exit {st.failed.get('exit_code')}{why}; "
                f"log {job.log_path(st.job)}")
    if st.job is not None:
        state = f"{st.slurm[0]} ({st.slurm[1]})" if st.slurm else "finished without DONE"
        return f"{job.name:<12} incomplete job {st.job}: {state}; log {job.log_path(st.job)}"
    return f"{job.name:<12} not submitted"


def status(jobs: list[Job], only: list[str] | None = None) -> tuple[list[str], bool]:
    """Status lines of every stage, and whether all stages (those in ``only``, if given) are complete."""
    states = read_states(jobs)
    complete = all(states[j.name].done is not None for j in jobs if not only or j.name in only)
    return [status_line(j, states[j.name]) for j in jobs], complete


def wait(jobs: list[Job], poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Block until no stage of ``jobs`` has a queued or running job (or ``timeout_s`` passes)."""
    start = time.monotonic()
    while any(s.alive for s in read_states(jobs).values()):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"stages still queued or running after {timeout_s:.0f} s")
        time.sleep(poll_s)
