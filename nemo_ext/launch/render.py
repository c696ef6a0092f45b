"""Pure rendering: a checked ``LauncherConfig`` -> a plan of jobs -> sbatch script text and command.

A ``script`` stage runs ``$PYTHON <script> <overrides>`` as one srun task per GPU (``tasks_per_node``),
so ``nemo_ext.dist`` finds its rank in ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and runs
the entry point in place instead of self-launching. The launcher appends ``trainer.num_nodes=<nodes>``
(checked by ``dist.check_nodes`` against ``SLURM_NNODES``) and ``trainer.devices=<tasks_per_node>``;
an override that sets either to another value is an error. A ``shell`` stage runs its line under
``bash -euo pipefail -c`` in each srun task (one by default). Nothing here touches files or SLURM.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from nemo_ext.launch.marker import DONE
from nemo_ext.launch.schema import LaunchConfigError, LauncherConfig, StageConfig

STATE_SUBDIR = "launch"  # scripts, logs and markers: <output_root>/launch/<stage>/


@dataclass(frozen=True)
class Job:
    """One stage as a SLURM job: its resolved resources and the stages it waits for."""

    name: str
    stage: StageConfig
    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    time: str
    deps: tuple[str, ...]
    state_dir: str  # absolute

    @property
    def script_path(self) -> str:
        return posixpath.join(self.state_dir, "job.sbatch")

    def log_path(self, job_id: str) -> str:
        return posixpath.join(self.state_dir, f"slurm-{job_id}.out")


def under(workdir: str, path: str) -> str:
    """``path`` made absolute against ``workdir`` (pure: no file system access)."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(workdir, path))


def state_root(cfg: LauncherConfig) -> str:
    return posixpath.join(under(cfg.cluster.workdir or ".", cfg.cluster.output_root), STATE_SUBDIR)


def plan(cfg: LauncherConfig) -> list[Job]:
    """The enabled stages in pipeline order, with defaults filled in and dependencies resolved:
    ``depends_on: null`` is the previous enabled stage; a named but disabled stage is dropped."""
    enabled = [n for n, s in cfg.pipeline.items() if s.enabled]
    jobs, root = [], state_root(cfg)
    for i, name in enumerate(enabled):
        s = cfg.pipeline[name]
        deps = enabled[i - 1:i] if s.depends_on is None else [d for d in s.depends_on if d in enabled]
        gpus = cfg.cluster.gpus_per_node if s.gpus_per_node is None else s.gpus_per_node
        tasks = s.tasks_per_node or (max(gpus, 1) if s.script is not None else 1)
        jobs.append(Job(name, s, s.nodes, gpus, tasks, s.time or cfg.cluster.time, tuple(deps),
                        posixpath.join(root, name)))
    for job in jobs:
        trainer_overrides(job)  # fail at planning time, not in the job
    return jobs


def trainer_overrides(job: Job) -> list[str]:
    """The ``trainer.num_nodes``/``trainer.devices`` overrides a script stage needs under SLURM (those
    the stage's own overrides do not already set to the same values)."""
    if job.stage.script is None:
        return []
    wanted = {"trainer.num_nodes": job.nodes, "trainer.devices": job.tasks_per_node}
    given = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in job.stage.overrides if "=" in o}
    for key, value in wanted.items():
        if key in given and given[key] != str(value):
            source = "nodes" if key == "trainer.num_nodes" else "tasks_per_node (one process per GPU)"
            raise LaunchConfigError(
                f"key 'pipeline.{job.name}.overrides': {key}={given[key]} disagrees with the stage's {source} "
                f"= {value}; drop the override (the launcher sets it) or change the stage")
    return [f"{k}={v}" for k, v in wanted.items() if k not in given]


def srun_line(cfg: LauncherConfig, job: Job) -> str:
    """The job's one srun command (``"$PYTHON"`` expands in the job, after the setup lines)."""
    c, s = cfg.cluster, job.stage
    opts = [f"--nodes={job.nodes}", f"--ntasks-per-node={job.tasks_per_node}"]
    if s.cpus_per_task:
        opts.append(f"--cpus-per-task={s.cpus_per_task}")  # srun no longer inherits it from sbatch (22.05)
    if job.gpus_per_node:
        opts.append(f"--gpus-per-node={job.gpus_per_node}")
    opts += container_args(cfg) + list(c.srun_args) + list(s.srun_args)
    if s.script is not None:
        command = '"$PYTHON" ' + shlex.join([s.script, *s.overrides, *trainer_overrides(job)])
    else:
        command = "bash -euo pipefail -c " + shlex.quote(s.shell)
    return f"srun {shlex.join(opts)} {command}"


def container_args(cfg: LauncherConfig) -> list[str]:
    c = cfg.cluster
    if c.container_image is None:
        return []
    args = [f"--container-image={c.container_image}", f"--container-workdir={c.workdir}"]
    if c.container_mounts:
        args.append(f"--container-mounts={','.join(c.container_mounts)}")
    return args


def _python_on_host(cfg: LauncherConfig) -> str:
    """How the job runs ``$PYTHON`` outside its main srun: inside the container when there is one."""
    if cfg.cluster.container_image is None:
        return '"$PYTHON"'
    return f"srun --nodes=1 --ntasks=1 {shlex.join(container_args(cfg))} \"$PYTHON\""


def sbatch_header(cfg: LauncherConfig, job: Job) -> list[str]:
    c = cfg.cluster
    opts = [f"--job-name={c.job_prefix}-{job.name}"]
    opts += [f"--{k}={v}" for k, v in (("partition", c.partition), ("account", c.account), ("qos", c.qos)) if v]
    opts += [f"--nodes={job.nodes}", f"--ntasks-per-node={job.tasks_per_node}"]
    if job.stage.cpus_per_task:
        opts.append(f"--cpus-per-task={job.stage.cpus_per_task}")
    if job.gpus_per_node:
        opts.append(f"--gpus-per-node={job.gpus_per_node}")
    opts += [f"--time={job.time}", f"--chdir={c.workdir}", f"--output={job.log_path('%j')}",
             "--kill-on-invalid-dep=yes",  # a failed dependency cancels this job instead of leaving it pending
             "--no-requeue"]  # a node failure ends the job (FAILED marker; re-run resumes), not a silent rerun
    opts += list(c.sbatch_args) + list(job.stage.sbatch_args)
    return [f"#SBATCH {o}" for o in opts]


def render_script(cfg: LauncherConfig, job: Job, source: str = "launcher.yaml") -> str:
    """The complete sbatch script of ``job``: resources, environment, the srun line, the markers."""
    q = shlex.quote
    py = _python_on_host(cfg)
    env = [f"export {k}={q(v)}" for k, v in job.stage.env.items()]
    lines = [
        "#!/bin/bash",
        f"# Stage {job.name!r} of {source}, written by `python -m nemo_ext.launch`: edit the YAML, not this file.",
        *sbatch_header(cfg, job),
        "set -euo pipefail",
        f"cd {q(cfg.cluster.workdir)}",
        f"STATE={q(job.state_dir)}",
        f'if [ -f "$STATE/{DONE}" ]; then echo "stage {job.name} already complete ($STATE/{DONE})"; exit 0; fi',
        *cfg.cluster.setup,
        f"export PYTHON={q(cfg.cluster.python)}",
        'export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"  # torch.distributed rendezvous',
        *env,
        # The marker writer ignores SIGTERM: after a node failure srun exits and SLURM's SIGTERM
        # follows at once, which would kill it mid-write (a dead node left no marker).
        f"trap 'rc=$?; trap \"\" TERM; [ $rc -eq 0 ] || {py} -m nemo_ext.launch.marker failed \"$STATE\" "
        "--job \"$SLURM_JOB_ID\" --code $rc || true' EXIT",
        # SLURM ends a job with SIGTERM (scancel, time limit, node failure), after which bash would run
        # the EXIT trap with $? = 0. Runs once srun (signalled too) has exited, within KillWait.
        "trap 'exit 143' TERM",
        f'echo "== stage {job.name}: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, $(date -Is)"',
        srun_line(cfg, job),
        f'{py} -m nemo_ext.launch.marker done "$STATE" --job "$SLURM_JOB_ID"',
        "",
    ]
    return "\n".join(lines)


def sbatch_argv(script_path: str, dep_ids: list[str]) -> list[str]:
    """``sbatch --parsable [--dependency=afterok:ID:ID] SCRIPT``."""
    argv = ["sbatch", "--parsable"]
    if dep_ids:
        argv.append("--dependency=afterok:" + ":".join(dep_ids))
    return [*argv, script_path]
