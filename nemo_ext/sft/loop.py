"""The SFT run: prepare model and data, then a loop of named phases (batch, step, log, checkpoint),
then export and a held-out check (nemo_ext/evaluation/heldout.py). One function per phase; ``run_sft``
reads top to bottom."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_ext import dist
from nemo_ext.backends import build_backend
from nemo_ext.backends.base import Backend
from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.checkpoint import CheckpointManager
from nemo_ext.config.schema import ResumeMode, SFTConfig
from nemo_ext.data.shards import METADATA, PackedDataset
from nemo_ext.data.sources import ChatFields
from nemo_ext.data.synthetic import write_split
from nemo_ext.evaluation.heldout import evaluate_heldout
from nemo_ext.garbage_collection import collect_between_steps
from nemo_ext.io import atomic_write_json
from nemo_ext.models.hf_config import matmul_parameters
from nemo_ext.models.tiny import build_tiny_checkpoint
from nemo_ext.observe import MetricsLogger, model_flops, peak_flops, plot_curves, progress
from nemo_ext.output_lock import OutputLock
from nemo_ext.prep.pack_job import PackConfig, pack_dataset
from nemo_ext.rewards import RewardPool
from nemo_ext.sft.data import BatchSchedule, micro_batch, steps_per_epoch
from nemo_ext.sft.loss import sft_loss

log = logging.getLogger(__name__)


@dataclass
class RunPaths:
    root: Path

    @property
    def init_model(self) -> Path:
        return self.root / "init_model"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def hf(self) -> Path:
        return self.root / "hf"


def prepare_model(cfg: SFTConfig, paths: RunPaths, world: dist.World) -> str:
    """The HF directory to start from; "tiny" builds the project's own model (rank 0, once)."""
    if cfg.model.name_or_path != "tiny":
        return cfg.model.name_or_path
    if world.is_main and not (paths.init_model / "config.json").exists():
        build_tiny_checkpoint(paths.init_model, seed=cfg.trainer.seed)
    dist.barrier()
    return str(paths.init_model)


def prepare_data(cfg: SFTConfig, paths: RunPaths, tokenizer: str, world: dist.World) -> Path:
    """The packed training shards; the synthetic task's when none are given."""
    train_dir = Path(cfg.data.train_dir) if cfg.data.train_dir else paths.data / "packed"
    if world.is_main and not cfg.data.train_dir:
        syn = cfg.data.synthetic
        raw = write_split(paths.data / "train.jsonl", syn.num_train, syn.seed, "train")
        fields = ChatFields(prompt="question", response="output", task="task")
        pack_dataset(PackConfig(input=str(raw), output=str(train_dir), tokenizer=tokenizer,
                                bin_size=cfg.data.bin_size, fields=fields), progress=False)
    dist.barrier()
    if not (train_dir / METADATA).exists():
        raise FileNotFoundError(f"data.train_dir={train_dir} holds no finished pack ({METADATA}); "
                                "run data_prep/pack.py first")
    return train_dir


def total_steps_of(cfg: SFTConfig, num_bins: int) -> int:
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return cfg.trainer.epochs * steps_per_epoch(num_bins, cfg.trainer.global_batch_size)


def train_step(backend: Backend, dataset: PackedDataset, schedule: BatchSchedule, step: int
               ) -> tuple[dict, list[int]]:
    """One optimizer step on this rank's share of the global batch; returns metrics and sequence lengths."""
    micro_batches = [micro_batch([dataset[i] for i in bins]) for bins in schedule.bins(step)]
    global_tokens = backend.dp_sum(sum(mb.num_loss_tokens for mb in micro_batches))
    metrics = backend.train_step(micro_batches, sft_loss(global_tokens), temperature=1.0)
    lens = [n for mb in micro_batches for n in mb.seq_lengths]
    return metrics, lens


def run_sft(cfg: SFTConfig) -> dict:
    """Train, checkpoint, export and check one SFT run; called once per rank. Rank 0 holds the lock of
    ``output_dir`` throughout: a second run into it is refused at start, naming this one."""
    world = dist.world_from_env() or dist.World(0, 0, 1)
    with OutputLock(cfg.output_dir, enabled=world.is_main):
        return train_and_export(cfg, world)


def train_and_export(cfg: SFTConfig, world: dist.World) -> dict:
    dist.check_nodes(cfg.trainer.num_nodes)
    device = dist.init_distributed(world, dist.use_cuda(cfg.trainer.accelerator))
    dist.seed_everything(cfg.trainer.seed)
    paths = RunPaths(Path(cfg.output_dir))
    model_path = prepare_model(cfg, paths, world)
    train_dir = prepare_data(cfg, paths, cfg.model.tokenizer or model_path, world)

    dataset = PackedDataset(train_dir)
    t = cfg.trainer
    total_steps = total_steps_of(cfg, len(dataset))
    o = cfg.optim
    lr_schedule = LRSchedule(o.lr, o.warmup_steps, total_steps, o.min_lr)  # cosine from optim.lr to optim.min_lr
    backend = build_backend(cfg.backend, model_path, cfg.model, cfg.trainer, cfg.optim, lr_schedule, device,
                            batch_sizes=(t.global_batch_size, t.micro_batch_size), tokenizer=cfg.model.tokenizer)
    # by data-parallel rank: the tensor / pipeline / context-parallel ranks of a replica take the same bins
    schedule = BatchSchedule(len(dataset), t.global_batch_size, t.micro_batch_size, t.seed, backend.dp_rank,
                             backend.dp_world_size)
    ckpts = CheckpointManager(Path(cfg.checkpoint.dir or paths.checkpoints), cfg.checkpoint.keep_last, world.is_main)
    start = resume(cfg, backend, ckpts)

    logger = MetricsLogger(paths.root / "logs", cfg.logging.tensorboard, enabled=world.is_main, resume_step=start)
    bar = progress(total_steps, start, cfg.logging.progress_bar and world.is_main, "sft")
    peak = peak_flops(device)
    matmul_params = matmul_parameters(backend.hf_config) if peak else 0
    with collect_between_steps(t.gc_interval) as collector:
        for step in range(start, total_steps):
            tic = time.perf_counter()
            metrics, lens = train_step(backend, dataset, schedule, step)
            metrics.update(throughput(backend, lens, time.perf_counter() - tic, peak, matmul_params,
                                      world.world_size))
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if (step + 1) % cfg.logging.log_every == 0 or step + 1 == total_steps:
                logger.log(step + 1, metrics, prefix="train/")
            if cfg.checkpoint.save_every and (step + 1) % cfg.checkpoint.save_every == 0 and step + 1 < total_steps:
                ckpts.save(backend, step + 1, {"step": step + 1, "rng": dist.rng_state()})
            collector.after_step(step + 1)
    bar.close()
    ckpts.save(backend, total_steps, {"step": total_steps, "rng": dist.rng_state()})
    if cfg.checkpoint.export_hf:
        backend.export_hf(paths.hf)
    del backend  # the memory it held (a GPU's) goes to the held-out check's vLLM engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dist.barrier()
    return finish(cfg, paths, logger, world)


def throughput(backend: Backend, lens: list[int], seconds: float, peak: float | None, matmul_params: int,
               world_size: int) -> dict:
    """Tokens/s of the step over all ranks (``lens``: this rank's sequence lengths) and, on a GPU of
    known ``peak`` FLOP/s, its MFU (``observe.model_flops``; the data-parallel ranks' bins are alike)."""
    out = {"tokens_per_s": backend.dp_sum(sum(lens)) / seconds, "step_time_s": seconds}
    if peak:
        cfg = backend.hf_config
        flops = model_flops(matmul_params, cfg.num_hidden_layers, cfg.hidden_size, lens) * backend.dp_world_size
        out["mfu"] = flops / seconds / (peak * world_size)
    return out


def resume(cfg: SFTConfig, backend: Backend, ckpts: CheckpointManager) -> int:
    """The step to start at: 0, or the step of the newest complete checkpoint when resuming."""
    latest = ckpts.latest() if cfg.checkpoint.resume == ResumeMode.auto else None
    if latest is None:
        return 0
    extra = backend.load(latest)
    dist.set_rng_state(extra["rng"])
    log.info("resumed from %s (step %d)", latest, extra["step"])
    return int(extra["step"])


def finish(cfg: SFTConfig, paths: RunPaths, logger: MetricsLogger, world: dist.World) -> dict:
    """Plot the loss curve, measure held-out exact match on the export (rank 0), write summary.json."""
    summary: dict = {"output_dir": str(paths.root)}
    if world.is_main:
        logger.close()
        if cfg.logging.plot:
            summary["loss_curve"] = str(plot_curves(paths.root / "logs" / "metrics.jsonl",
                                                    ["train/loss", "train/lr", "train/grad_norm"],
                                                    paths.root / "loss_curve.png", "SFT"))
        if cfg.checkpoint.export_hf and cfg.eval.num_problems > 0:
            with RewardPool(os.cpu_count() or 1) as pool:
                result = evaluate_heldout(cfg.eval, paths.hf, paths.root / "heldout", "sft", pool)
            summary.update(heldout_accuracy=result["accuracy"], heldout_problems=result["problems"])
            print(f"held-out exact match: {result['accuracy']:.1%} of {result['problems']} problems ({paths.hf})",
                  flush=True)
        atomic_write_json(paths.root / "summary.json", summary)
    dist.barrier()
    return summary
