"""launcher.yaml -> sbatch jobs, run by a real SLURM (slurmctld + slurmd on localhost, Debian's
slurm-wlm with munge, installed by `make sysdeps`), not a mock.

The module fixture starts a one-node cluster (tests/slurm_cluster.py: slurm.conf in a temporary
directory, proctrack/linuxproc, task/none, select/cons_tres, the daemons in the foreground) and
stops it at the end. The tests submit small pipelines through ``nemo_ext.launch`` and check order,
dependencies, srun ranks, failure handling and resume; the rest render launcher.yaml without SLURM.
Across two nodes: tests/test_launch_multinode.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_ext.launch.render import plan, render_script, sbatch_argv
from nemo_ext.launch.schema import LaunchConfigError, load_launcher
from nemo_ext.launch.submit import StageState, decide, status, submit, wait
from tests import slurm_cluster
from tests.slurm_cluster import write_launcher_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")  # the daemons stop when this file's tests are done, not at session end
def slurm(tmp_path_factory):
    """A running one-node SLURM cluster; SLURM_CONF points every client (and the launcher) at it."""
    with slurm_cluster.running(tmp_path_factory.mktemp("slurm"), nodes=1) as cluster:
        yield cluster


RANKS_PY = """\
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = args["out"]
os.makedirs(out, exist_ok=True)
env = {k: os.environ[k] for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_LOCALID")}
with open(os.path.join(out, f"rank{env['SLURM_PROCID']}.json"), "w") as f:
    json.dump({"env": env, "argv": sys.argv[1:], "input": open(args["input"]).read(), "t": time.time()}, f)
    f.write("\\n")
"""


def test_pipeline_runs_in_order_with_ranks_and_rerun_submits_nothing(slurm, tmp_path):
    (tmp_path / "ranks.py").write_text(RANKS_PY)
    cfg = write_launcher_config(tmp_path, f"""\
        write:
          shell: mkdir -p ${{pipeline.write.output}} && echo hello > ${{pipeline.write.output}}/data.txt
            && date +%s.%N > ${{pipeline.write.output}}/t
          output: {tmp_path}/out/write
        ranks:
          script: {tmp_path}/ranks.py
          overrides:
            - input=${{pipeline.write.output}}/data.txt
            - out=${{pipeline.ranks.output}}
          output: {tmp_path}/out/ranks
          tasks_per_node: 2
        report:
          shell: mkdir -p ${{pipeline.report.output}} && cat ${{pipeline.ranks.output}}/rank*.json
            > ${{pipeline.report.output}}/all.jsonl && date +%s.%N > ${{pipeline.report.output}}/t
          depends_on: [write, ranks]
          output: {tmp_path}/out/report
        """)
    cli = [sys.executable, "-m", "nemo_ext.launch", str(cfg)]
    first = subprocess.run([*cli, "--wait"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    job = dict(re.findall(r"^(\w+): submitted job (\d+)", first.stdout, re.M))
    assert sorted(job) == ["ranks", "report", "write"]
    assert f"ranks: submitted job {job['ranks']} after {job['write']};" in first.stdout  # afterok chain
    assert f"report: submitted job {job['report']} after {job['write']}, {job['ranks']};" in first.stdout
    out = tmp_path / "out"
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rec in enumerate(ranks):  # two srun tasks, each with its own rank, reading stage 1's output
        assert rec["env"] == {"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_NNODES": "1",
                              "SLURM_LOCALID": str(r)}
        assert rec["input"] == "hello\n"
        assert rec["argv"][-2:] == ["trainer.num_nodes=1", "trainer.devices=2"]  # what dist.py needs
    t_write = float((out / "write" / "t").read_text())
    t_report = float((out / "report" / "t").read_text())
    assert t_write < min(r["t"] for r in ranks) <= max(r["t"] for r in ranks) < t_report
    assert len((out / "report" / "all.jsonl").read_text().splitlines()) == 2
    for stage in ("write", "ranks", "report"):
        state = out / "launch" / stage
        assert json.loads((state / "DONE").read_text())["job"] == json.loads((state / "JOB").read_text())["job"]
        assert list(state.glob("slurm-*.out")) and (state / "job.sbatch").exists()
    assert "complete" in first.stdout.splitlines()[-1]

    again = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stdout and again.stdout.count("skipped") == 3


def test_failed_stage_cancels_dependents_is_reported_and_resumes(slurm, tmp_path):
    flag = tmp_path / "fixed"
    cfg = write_launcher_config(tmp_path, f"""\
        ok:
          shell: sleep 2 && mkdir -p {tmp_path}/out/ok && echo ok > {tmp_path}/out/ok/x
        bad:
          shell: test -f {flag} || exit 3
        after:
          shell: touch {tmp_path}/out/after_ran
        """)
    launcher = load_launcher(cfg)
    jobs = plan(launcher)
    ids = submit(launcher, jobs, echo=lambda _: None)
    assert set(ids) == {"ok", "bad", "after"}
    log: list[str] = []
    assert submit(launcher, jobs, echo=log.append) == ids  # still queued: kept, not submitted twice
    assert all("kept" in line for line in log), log
    wait(jobs, poll_s=0.3, timeout_s=40)
    lines, complete = status(jobs)
    assert not complete
    assert "complete" in lines[0]
    assert "FAILED" in lines[1] and "exit 3" in lines[1] and f"slurm-{ids['bad']}.out" in lines[1]
    assert "CANCELLED" in lines[2] and "DependencyNeverSatisfied" in lines[2]
    assert not (tmp_path / "out" / "after_ran").exists()

    flag.touch()  # "fix" the stage, then run the launcher again: only bad and its dependent go
    log.clear()
    resumed = submit(launcher, jobs, echo=log.append)
    assert "ok" not in resumed and set(resumed) == {"bad", "after"}
    assert any(line.startswith("ok: complete") for line in log)
    assert f"after {resumed['bad']}" in log[-1]
    wait(jobs, poll_s=0.3, timeout_s=40)
    lines, complete = status(jobs)
    assert complete, lines
    assert (tmp_path / "out" / "after_ran").exists()
    assert not (tmp_path / "out" / "launch" / "bad" / "FAILED").exists()


def test_a_job_slurm_ends_is_marked_failed(slurm, tmp_path):
    """scancel (as the time limit and a node failure) ends a job with SIGTERM: the stage is FAILED,
    with the signal's exit code, not left looking as if it had never run."""
    started = tmp_path / "started"
    cfg = write_launcher_config(tmp_path, f"long: {{shell: 'touch {started} && sleep 120'}}\n")
    launcher = load_launcher(cfg)
    jobs = plan(launcher)
    ids = submit(launcher, jobs, echo=lambda _: None)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the stage did not start"
        time.sleep(0.1)
    subprocess.run(["scancel", ids["long"]], check=True)
    wait(jobs, poll_s=0.3, timeout_s=30)
    failed = json.loads((tmp_path / "out" / "launch" / "long" / "FAILED").read_text())
    assert failed["job"] == ids["long"] and failed["exit_code"] == 143  # 128 + SIGTERM
    lines, complete = status(jobs)
    assert not complete and "FAILED" in lines[0] and "exit 143, SLURM: CANCELLED" in lines[0]


@pytest.mark.parametrize("stage, key", [
    ("a: {shell: 'true', nodez: 2}", "pipeline.a.nodez"),
    ("a: {shell: 'true', nodes: two}", "pipeline.a.nodes"),
    ("a: {shell: 'true', nodes: 0}", "pipeline.a.nodes"),
    ("a: {shell: 'true', time: '3 hours'}", "pipeline.a.time"),
    ("a: {shell: 'true', script: x.py}", "pipeline.a.script/shell"),
    ("a: {nodes: 1}", "pipeline.a.script/shell"),
    ("a: {shell: 'true', overrides: [x=1]}", "pipeline.a.overrides"),
    ("a: {shell: 'true', depends_on: [b]}\nb: {shell: 'true'}", "pipeline.a.depends_on"),
    ("a: {shell: 'true', output: '${pipeline.zzz.output}'}", "pipeline.a.output"),
    ("a: {script: x.py, overrides: [trainer.devices=8], tasks_per_node: 2}", "pipeline.a.overrides"),
])
def test_schema_errors_name_the_key(tmp_path, stage, key):
    cfg = write_launcher_config(tmp_path, stage)
    with pytest.raises(LaunchConfigError, match=key.replace(".", r"\.").replace("*", r"\*")) as err:
        plan(load_launcher(cfg))
    assert f"key '{key}'" in str(err.value)


def test_profile_errors_name_the_key(tmp_path):
    cfg = write_launcher_config(tmp_path, "a: {shell: 'true'}\n", "profiles:\n  p: {cluster: {gpus: 1}}\n")
    with pytest.raises(LaunchConfigError, match=r"profile 'p'.*cluster\.gpus.*allowed keys: partition"):
        load_launcher(cfg, "p")
    with pytest.raises(LaunchConfigError, match=r"profiles\.q.*defined: \['p'\]"):
        load_launcher(cfg, "q")


def _scripts(profile: str | None) -> dict[str, tuple[list[str], str]]:
    cfg = load_launcher(REPO / "launcher.yaml", profile)
    jobs = plan(cfg)
    ids = {}
    for job in jobs:
        ids[job.name] = (sbatch_argv(job.script_path, [f"<{d}>" for d in job.deps]), render_script(cfg, job))
    return ids


def _sbatch_lines(script: str) -> set[str]:
    return {line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")}


def test_real_launcher_yaml_renders_the_7b_pipeline():
    scripts = _scripts(None)
    assert list(scripts) == ["data_prep", "sft", "rl", "eval_sft", "eval_rl", "report"]
    argv, sft = scripts["sft"]
    assert {"--nodes=8", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=2-00:00:00", "--partition=batch",
            "--exclusive", "--kill-on-invalid-dep=yes", "--no-requeue",
            "--job-name=acereason-sft"} <= _sbatch_lines(sft)
    srun = next(line for line in sft.splitlines() if line.startswith("srun "))
    assert "--config-name=sft/acereason_7b" in srun and srun.endswith("trainer.num_nodes=8 trainer.devices=8")
    assert "data.train_dir=runs/acereason_7b/data/packed_32k" in srun
    assert "--dependency=afterok:<data_prep>" in argv
    _, rl = scripts["rl"]
    assert {"--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8"} <= _sbatch_lines(rl)
    assert next(line for line in rl.splitlines() if line.startswith("srun ")).endswith("trainer.devices=8")
    assert "policy.init=runs/acereason_7b/sft/hf" in rl
    assert "--dependency=afterok:<sft>" in scripts["eval_sft"][0]  # evaluates the SFT model beside RL
    assert "--dependency=afterok:<eval_sft>:<eval_rl>" in scripts["report"][0]
    for _, script in scripts.values():
        assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
        assert "-m nemo_ext.launch.marker done" in script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash


def _data_prep_commands() -> list[list[str]]:
    """The data_prep stage's commands (split at ``&&``), each as argv after ``$PYTHON``."""
    _, script = _scripts(None)["data_prep"]
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    shell = shlex.split(srun)[-1]  # bash -euo pipefail -c '<commands>'
    return [shlex.split(part)[1:] for part in shell.split("&&")]


def test_data_prep_writes_the_rl_prompt_files_the_rl_configs_read():
    from data_prep.rl_prompts import parse_args
    from tests.test_rl_config import rl_config

    commands = _data_prep_commands()
    prompt_runs = [parse_args(argv[1:])[0] for argv in commands if argv[0] == "data_prep/rl_prompts.py"]
    written = {cfg.task: cfg.output for cfg in prompt_runs}
    assert written == {"math": "data/rl/acereason_math.jsonl", "code": "data/rl/acereason_code.jsonl"}
    for name in ("rl/acereason_7b", "rl/acereason_7b_megatron"):
        stages = rl_config(name).stages
        assert {(s.task.value, s.data) for s in stages} == set(written.items()), name
    code = next(cfg for cfg in prompt_runs if cfg.task == "code")
    lcb_dir = "runs/acereason_7b/data/livecodebench"
    assert code.input == ("deepmind/code_contests", lcb_dir)
    # PAPER.md "RL data": the three judges, problems from 2024-08-01 dropped, 14-gram decontamination
    assert (code.platforms, code.before, code.ngram, code.validation) == (
        ("atcoder", "aizu", "leetcode"), "2024-08-01", 14, "full")
    assert {"lcb_v5", "lcb_v6", "aime24", "aime25", "hmmt_feb25", "brumo25", "math500"} == set(code.benchmarks.names)
    download = next(argv for argv in commands if argv[:3] == ["-m", "huggingface_hub.cli.hf", "download"])
    assert download[3] == "livecodebench/code_generation_lite" and download[-1] == lcb_dir
    assert [f for f in download if f.endswith(".jsonl")] == ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl"]


def test_tiny_profile_renders_the_embedded_default():
    scripts = _scripts("tiny")
    assert list(scripts) == ["sft", "rl", "eval_sft", "eval_rl", "report"]  # data_prep disabled
    assert scripts["sft"][0] == ["sbatch", "--parsable", str(REPO / "runs/launch_tiny/launch/sft/job.sbatch")]
    for _, script in scripts.values():
        lines = _sbatch_lines(script)
        assert not any(line.startswith(("--gpus", "--partition", "--exclusive")) for line in lines)
        assert "export PYTHON=.venv/bin/python" in script
    assert "recipes/sft.py output_dir=runs/launch_tiny/sft logging.progress_bar=false" in scripts["sft"][1]
    assert "run_benchmarks.sh runs/launch_tiny/rl/hf embedded" in scripts["eval_rl"][1]


def test_only_needs_its_dependencies_complete_or_queued(tmp_path):
    jobs = plan(load_launcher(write_launcher_config(tmp_path, "a: {shell: 'true'}\nb: {shell: 'true'}\n")))
    fresh = {"a": StageState(), "b": StageState()}
    with pytest.raises(LaunchConfigError, match="depends on 'a', which is neither complete nor queued"):
        decide(jobs, fresh, only=["b"])
    with pytest.raises(LaunchConfigError, match="--only c: no such enabled stage"):
        decide(jobs, fresh, only=["c"])
    done_a = {**fresh, "a": StageState(done={"job": "7"}, job="7")}
    assert decide(jobs, done_a, only=["b"]) == {"a": "skip", "b": "submit"}
    assert decide(jobs, done_a) == {"a": "done", "b": "submit"}
    assert decide(jobs, done_a, force=True) == {"a": "submit", "b": "submit"}
    queued_a = {**fresh, "a": StageState(job="8", slurm=("RUNNING", "None"))}
    assert decide(jobs, queued_a, force=True) == {"a": "queued", "b": "submit"}


def test_cli_dry_run_writes_scripts_and_submits_nothing(tmp_path):
    shutil.copy(REPO / "launcher.yaml", tmp_path / "launcher.yaml")  # workdir = tmp_path: no markers there
    out = subprocess.run([sys.executable, "-m", "nemo_ext.launch", str(tmp_path / "launcher.yaml"), "--profile", "tiny",
                          "--dry-run", "--write-scripts", str(tmp_path / "scripts")],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 0, out.stderr
    names = sorted(["sft", "rl", "eval_sft", "eval_rl", "report"])
    assert sorted(p.name for p in (tmp_path / "scripts").iterdir()) == [f"{n}.sbatch" for n in names]
    assert "# rl: sbatch --parsable --dependency=afterok:<sft>" in out.stdout and "submitted" not in out.stdout
    assert not (tmp_path / "runs").exists()  # nothing written under the output root


PAPER_RL = REPO / "tests" / "fixtures" / "launch" / "paper_rl_16_nodes.txt"


def test_paper_rl_profile_runs_rl_on_16_nodes(tmp_path):
    """The paper's RL layout (128 H100s as 16 nodes x 8 GPUs): the dry run's rl job, as checked in
    (tests/fixtures/launch/paper_rl_16_nodes.txt, the work dir written <workdir>)."""
    shutil.copy(REPO / "launcher.yaml", tmp_path / "launcher.yaml")  # workdir = tmp_path: no markers there
    out = subprocess.run([sys.executable, "-m", "nemo_ext.launch", "launcher.yaml", "--profile", "paper_rl_16_nodes",
                          "--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    blocks = dict(re.findall(r"^# (\w+): (sbatch .*?)(?=^# \w+: sbatch |\Z)", out.stdout, re.M | re.S))
    assert list(blocks) == ["data_prep", "sft", "rl", "eval_sft", "eval_rl", "report"]
    rl = blocks["rl"].replace(str(tmp_path), "<workdir>")
    assert rl == PAPER_RL.read_text(), f"the rl job changed; if that is intended, update {PAPER_RL} with:\n{rl}"
    lines = _sbatch_lines(rl)
    assert {"--nodes=16", "--ntasks-per-node=8", "--gpus-per-node=8", "--exclusive"} <= lines  # 128 GPUs
    srun = next(line for line in rl.splitlines() if line.startswith("srun "))
    assert "--nodes=16 --ntasks-per-node=8" in srun and srun.endswith("trainer.num_nodes=16 trainer.devices=8")
    assert "--nodes=8" in blocks["sft"] and "--nodes=1" in blocks["eval_rl"]  # the other stages as without it
