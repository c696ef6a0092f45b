"""The SFT run: prepare model and data, then a loop of named phases (batch, step, log, checkpoint),
then export and a held-out check. One function per phase; ``run_sft`` reads top to bottom."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_ext import dist
from nemo_ext.backends import build_backend
from nemo_ext.backends.base import Backend
from nemo_ext.checkpoint import CheckpointManager
from nemo_ext.config.schema import ResumeMode, SFTConfig
from nemo_ext.data.pack_job import PackConfig, pack_dataset
from nemo_ext.data.shards import PackedDataset
from nemo_ext.data.sources import ChatFields
from nemo_ext.data.synthetic import write_split
from nemo_ext.io import atomic_write_json
from nemo_ext.models.hf_config import num_parameters
from nemo_ext.models.tiny import build_tiny_checkpoint
from nemo_ext.observe import MetricsLogger, model_flops, peak_flops, plot_curves, progress
from nemo_ext.output_lock import OutputLock
from nemo_ext.sft.accuracy import heldout_accuracy
from nemo_ext.sft.data import BatchSchedule, micro_batch, read_eval_problems, steps_per_epoch
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


def prepare_data(cfg: SFTConfig, paths: RunPaths, tokenizer: str, world: dist.World) -> tuple[Path, Path]:
    """Packed training shards and the held-out JSONL; the synthetic task's when none are given."""
    train_dir = Path(cfg.data.train_dir) if cfg.data.train_dir else paths.data / "packed"
    eval_file = Path(cfg.data.eval_file) if cfg.data.eval_file else paths.data / "heldout.jsonl"
    if world.is_main:
        syn = cfg.data.synthetic
        if not cfg.data.train_dir:
            raw = write_split(paths.data / "train.jsonl", syn.num_train, syn.seed, "train")
            fields = ChatFields(prompt="question", response="output", task="task")
            pack_dataset(PackConfig(input=str(raw), output=str(train_dir), tokenizer=tokenizer,
                                    bin_size=cfg.data.bin_size, fields=fields), progress=False)
        if not cfg.data.eval_file and not eval_file.exists():
            write_split(eval_file, syn.num_eval, syn.seed, "test")
    dist.barrier()
    return train_dir, eval_file


def check_inputs(cfg: SFTConfig) -> None:
    """Fail before any work, naming the key, when a configured input does not exist."""
    if cfg.data.train_dir and not (Path(cfg.data.train_dir) / "metadata.json").exists():
        raise FileNotFoundError(f"data.train_dir={cfg.data.train_dir} holds no finished pack (metadata.json); "
                                "run data_prep/pack.py first")
    if cfg.data.eval_file and cfg.eval.num_problems > 0 and not Path(cfg.data.eval_file).is_file():
        raise FileNotFoundError(f"data.eval_file={cfg.data.eval_file} does not exist")


def total_steps_of(cfg: SFTConfig, num_bins: int) -> int:
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return cfg.trainer.epochs * steps_per_epoch(num_bins, cfg.trainer.global_batch_size)


def train_step(backend: Backend, dataset: PackedDataset, schedule: BatchSchedule, step: int
               ) -> tuple[dict, list[int]]:
    """One optimizer step on this rank's share of the global batch; returns metrics and sequence lengths."""
    micro_batches = [micro_batch([dataset[i] for i in bins]) for bins in schedule.bins(step)]
    global_tokens = backend.dp_sum(sum(mb.num_loss_tokens for mb in micro_batches))
    metrics = backend.train_step(micro_batches, sft_loss(global_tokens))
    lens = [n for mb in micro_batches for n in mb.seq_lengths]
    return metrics, lens


def run_sft(cfg: SFTConfig) -> dict:
    """Train, checkpoint, export and check one SFT run; called once per rank. Rank 0 holds the lock of
    ``output_dir`` throughout: a second run into it is refused at start, naming this one."""
    world = dist.world_from_env() or dist.World(0, 0, 1)
    with OutputLock(cfg.output_dir, enabled=world.is_main):
        return train_and_export(cfg, world)


def train_and_export(cfg: SFTConfig, world: dist.World) -> dict:
    check_inputs(cfg)
    dist.check_nodes(cfg.trainer.num_nodes)
    device = dist.init_distributed(world, dist.use_cuda(cfg.trainer.accelerator))
    dist.seed_everything(cfg.trainer.seed)
    paths = RunPaths(Path(cfg.output_dir))
    model_path = prepare_model(cfg, paths, world)
    train_dir, eval_file = prepare_data(cfg, paths, cfg.model.tokenizer or model_path, world)

    dataset = PackedDataset(train_dir)
    t = cfg.trainer
    total_steps = total_steps_of(cfg, len(dataset))
    backend = build_backend(cfg.backend, model_path, cfg.model, cfg.trainer, cfg.optim, total_steps, device)
    # by data-parallel rank: the tensor / pipeline / context-parallel ranks of a replica take the same bins
    schedule = BatchSchedule(len(dataset), t.global_batch_size, t.micro_batch_size, t.seed, backend.dp_rank,
                             backend.dp_world_size)
    ckpts = CheckpointManager(Path(cfg.checkpoint.dir or paths.checkpoints), cfg.checkpoint.keep_last, world.is_main)
    start = resume(cfg, backend, ckpts)

    logger = MetricsLogger(paths.root / "logs", cfg.logging.tensorboard, enabled=world.is_main, resume_step=start)
    bar = progress(total_steps, start, cfg.logging.progress_bar and world.is_main, "sft")
    hf_cfg, peak = backend.hf_config, peak_flops(device)
    num_params = num_parameters(hf_cfg) if peak else 0
    for step in range(start, total_steps):
        tic = time.perf_counter()
        metrics, lens = train_step(backend, dataset, schedule, step)
        elapsed = time.perf_counter() - tic
        tokens = backend.dp_sum(sum(lens))
        metrics.update(tokens_per_s=tokens / elapsed, step_time_s=elapsed)
        if peak:
            flops = model_flops(num_params, hf_cfg.num_hidden_layers, hf_cfg.hidden_size, lens) * backend.dp_world_size
            metrics["mfu"] = flops / elapsed / (peak * world.world_size)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % cfg.logging.log_every == 0 or step + 1 == total_steps:
            logger.log(step + 1, metrics, prefix="train/")
        if cfg.checkpoint.save_every and (step + 1) % cfg.checkpoint.save_every == 0 and step + 1 < total_steps:
            ckpts.save(backend, step + 1, {"step": step + 1, "rng": dist.rng_state()})
    bar.close()
    ckpts.save(backend, total_steps, {"step": total_steps, "rng": dist.rng_state()})
    return finish(cfg, backend, paths, logger, eval_file, device, world)


def resume(cfg: SFTConfig, backend: Backend, ckpts: CheckpointManager) -> int:
    """The step to start at: 0, or the step of the newest complete checkpoint when resuming."""
    latest = ckpts.latest() if cfg.checkpoint.resume == ResumeMode.auto else None
    if latest is None:
        return 0
    extra = backend.load(latest)
    dist.set_rng_state(extra["rng"])
    log.info("resumed from %s (step %d)", latest, extra["step"])
    return int(extra["step"])


def finish(cfg: SFTConfig, backend: Backend, paths: RunPaths, logger: MetricsLogger, eval_file: Path,
           device: torch.device, world: dist.World) -> dict:
    """Export to HF, plot the loss curve, measure held-out exact match (rank 0)."""
    if cfg.checkpoint.export_hf:
        backend.export_hf(paths.hf)
    dist.barrier()
    summary: dict = {"output_dir": str(paths.root)}
    if world.is_main:
        logger.close()
        if cfg.logging.plot:
            summary["loss_curve"] = str(plot_curves(paths.root / "logs" / "metrics.jsonl",
                                                    ["train/loss", "train/lr", "train/grad_norm"],
                                                    paths.root / "loss_curve.png", "SFT"))
        if cfg.checkpoint.export_hf and cfg.eval.num_problems > 0:
            problems = read_eval_problems(eval_file, cfg.eval.num_problems)
            acc, rows = heldout_accuracy(paths.hf, problems, cfg.eval.max_new_tokens, device)
            summary.update(heldout_accuracy=acc, heldout_problems=len(rows))
            print(f"held-out exact match: {acc:.1%} of {len(rows)} problems ({paths.hf})", flush=True)
        atomic_write_json(paths.root / "summary.json", summary)
    dist.barrier()
    return summary
