"""The one reader of the RL config: builds what the GRPO loop works with (policy backend, vLLM
engine, reward pool, stage schedule, checkpoints) and resumes it from the newest checkpoint.

Each part of the run gets only its own section and the components built from it (``Rollouts``:
generate and score; ``PolicyUpdate``: advantages, log-probs, train, sync; ``RunCheckpoints``: the
``checkpoint`` section with the backend and the schedule); nothing downstream holds ``RLConfig``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from nemo_ext import dist
from nemo_ext.backends import build_backend
from nemo_ext.backends.base import Backend
from nemo_ext.config.rl import AdvantageConfig, LossConfig, RLConfig
from nemo_ext.config.schema import Accelerator, HeldoutConfig, LoggingConfig
from nemo_ext.data.problems import problem_prompt
from nemo_ext.evaluation.heldout import heldout_problems
from nemo_ext.rl.data_parallel import RankShare
from nemo_ext.rl.prompts import RLPrompt, load_stage_prompts
from nemo_ext.rl.rollout import RolloutEngine
from nemo_ext.rl.run_state import RunCheckpoints
from nemo_ext.rl.stages import StageSchedule, stage_lr_schedule

if TYPE_CHECKING:
    from nemo_ext.rewards import RewardPool


@dataclass
class Rollouts:
    """The generate and score phases: this rank's vLLM engine and reward pool."""

    engine: RolloutEngine
    reward_pool: RewardPool
    tokenizer: PreTrainedTokenizerBase  # the policy's (Backend.tokenizer)
    share: RankShare = field(default_factory=RankShare)
    prompt_ids: dict[str, list[int]] = field(default_factory=dict)  # token ids, cached per prompt id

    def tokens(self, prompt: RLPrompt) -> list[int]:
        if prompt.id not in self.prompt_ids:
            self.prompt_ids[prompt.id] = self.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        return self.prompt_ids[prompt.id]


@dataclass
class PolicyUpdate:
    """The advantages, sleep, log-probs, train, sync and wake phases: the policy, the engine it syncs
    into, and the ``advantage``, ``loss`` and ``policy.micro_batch_tokens`` settings."""

    backend: Backend
    engine: RolloutEngine  # only its sleep(), load_weights() and wake() are used here
    share: RankShare
    advantage: AdvantageConfig
    loss: LossConfig
    micro_batch_tokens: int


@dataclass
class RLRun:
    """What the loop works with."""

    rollouts: Rollouts
    update: PolicyUpdate
    schedule: StageSchedule
    checkpoints: RunCheckpoints
    heldout: HeldoutConfig  # the ``eval`` section
    logging: LoggingConfig
    out: Path
    init: Path  # the starting weights (a Hugging Face directory)
    gc_interval: int  # steps between garbage collections (trainer.gc_interval)
    share: RankShare = field(default_factory=RankShare)  # this process among the ranks and replicas

    @property
    def backend(self) -> Backend:
        return self.update.backend


def rank_visible_devices(local_rank: int, visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for one data-parallel rank of several on a node: its own GPU only.

    vLLM's in-process engine runs on the first visible GPU, whatever the rank, so every rank's trainer
    and engine are pinned to one GPU before CUDA starts. ``visible``: the node's setting (None: all
    GPUs); a single entry (SLURM's one GPU per task) is kept as it is.
    """
    if visible is None or not visible.strip():
        return str(local_rank)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if len(entries) == 1:
        return entries[0]
    if local_rank >= len(entries):
        raise RuntimeError(f"local rank {local_rank} has no GPU: CUDA_VISIBLE_DEVICES={visible!r} lists "
                           f"{len(entries)}; start at most that many ranks per node (trainer.devices)")
    return entries[local_rank]


def resolve_init(init: str, out: Path) -> Path:
    """The starting HF directory: ``policy.init``, or a fresh tiny Qwen2 for ``tiny``."""
    if init == "tiny":
        from nemo_ext.models.tiny import build_tiny_checkpoint

        path = out / "init_tiny"
        if not (path / "config.json").exists():
            build_tiny_checkpoint(path)
        return path
    path = Path(init)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"policy.init={init!r}: not a Hugging Face directory (no config.json); "
                                "pass the SFT run's hf/ export (python recipes/sft.py writes runs/sft_tiny/hf)")
    return path


def max_model_len(run_cfg: RLConfig, tokenizer) -> int:
    """rollout.max_model_len, or the longest prompt plus its response limit over the stages and the
    held-out evaluation."""
    if run_cfg.rollout.max_model_len is not None:
        return run_cfg.rollout.max_model_len
    longest = lambda texts: max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    need = 0
    for stage in run_cfg.stages:
        texts = [p.text for p in load_stage_prompts(stage, run_cfg.trainer.seed).values()]
        need = max(need, longest(texts) + stage.max_response_len)
    if problems := heldout_problems(run_cfg.eval):
        need = max(need, longest([problem_prompt(p) for p in problems]) + run_cfg.eval.max_new_tokens)
    return need


def join_ranks(cfg: RLConfig) -> torch.device:
    """Join this process's ranks (torchrun, SLURM or ``dist.launch``; alone: a group of one) and return
    its device; on GPUs each rank is first pinned to its own one (``rank_visible_devices``)."""
    world = dist.world_from_env() or dist.World(0, 0, 1)
    dist.check_nodes(cfg.trainer.num_nodes)
    if world.world_size > 1 and cfg.trainer.accelerator is not Accelerator.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = rank_visible_devices(world.local_rank,
                                                                  os.environ.get("CUDA_VISIBLE_DEVICES"))
        world = replace(world, local_rank=0)  # this rank's one GPU
    return dist.init_distributed(world, dist.use_cuda(cfg.trainer.accelerator))


def build_policy(cfg: RLConfig, init: Path, device: torch.device) -> Backend:
    """The ``cfg.backend`` trainer on the weights at ``init``, its optimizer on the first stage's schedule."""
    return build_backend(cfg.backend, str(init), cfg.model, cfg.trainer, cfg.optim, stage_lr_schedule(cfg.stages[0]),
                         device)


def build_update(cfg: RLConfig, backend: Backend, engine: RolloutEngine) -> PolicyUpdate:
    """The update phases on ``backend``, syncing into ``engine``; training goes by the backend's
    data-parallel replicas."""
    return PolicyUpdate(backend, engine, RankShare.current(backend), cfg.advantage, cfg.loss,
                        cfg.policy.micro_batch_tokens)


def build_run(cfg: RLConfig) -> RLRun:
    """Policy from ``policy.init`` (or the newest checkpoint), vLLM on the same weights, reward pool;
    one of each per rank (torchrun, SLURM or ``dist.launch``), joined here."""
    from nemo_ext.rewards import RewardPool

    device = join_ranks(cfg)
    share = RankShare.current()
    out = Path(cfg.output_dir)
    if share.is_main:
        out.mkdir(parents=True, exist_ok=True)
        init = resolve_init(cfg.policy.init, out)
    init = share.all_gather(init if share.is_main else None)[0]  # after rank 0 built a tiny model
    backend = build_policy(cfg, init, device)
    share = RankShare.current(backend)  # training goes by the backend's data-parallel replicas
    schedule = StageSchedule(cfg.stages, cfg.trainer.seed)
    checkpoints = RunCheckpoints(cfg.checkpoint, out, backend, schedule, is_main=share.is_main)
    resumed = checkpoints.resume()
    engine = RolloutEngine(str(init), cfg.rollout, max_model_len(cfg, backend.tokenizer), cfg.trainer.seed)
    if resumed is not None:
        engine.load_weights(backend.hf_weights())
        if share.is_main:
            print(f"[rl] resumed from {resumed}", flush=True)
    rollouts = Rollouts(engine, RewardPool(cfg.rollout.reward_workers), backend.tokenizer, share)
    return RLRun(rollouts, build_update(cfg, backend, engine), schedule, checkpoints, cfg.eval, cfg.logging, out,
                 init, cfg.trainer.gc_interval, share)


def close_run(run: RLRun) -> None:
    run.rollouts.reward_pool.close()
