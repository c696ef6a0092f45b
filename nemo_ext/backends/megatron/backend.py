"""``MegatronBackend``: the ``Backend`` interface on megatron-core, with TP / PP (1F1B, optional virtual
stages) / SP / CP / DP, Megatron DDP and the distributed optimizer.

One process per GPU (torchrun or the recipe's self-launch). The loop hands each data-parallel rank its
packed micro-batches; every TP / PP rank of one replica receives the same ones. A micro-batch runs
through megatron's forward-backward schedule (1F1B when PP > 1); on the last pipeline stage the
model's ``output_processor`` hook turns final hidden states into per-token log-probs with the
vocabulary-parallel, chunked ``vocab_parallel_logprobs`` (no full logits), and the loop's ``loss_fn``
takes them. With context parallelism each CP rank runs its share of every sequence
(``context_parallel.py``) and the log-probs are gathered back into the batch's order before
``loss_fn``, which so sees whole batches on every CP rank, as without CP.
Loss shares arrive already divided by the global normalizer, so gradients are plain sums:
``calculate_per_token_loss`` keeps the schedule from dividing by the number of micro-batches and DDP
from averaging over ranks, and ``_finalize_grads`` drops megatron's per-token rescaling.

Precision ``bf16``: bf16 parameters and activations, fp32 gradients and fp32 master weights in the
distributed optimizer (megatron's Float16Module + DistributedOptimizer). The learning-rate schedule is
``backends.schedule.LRSchedule``, the torch backend's too, so both backends train on the same schedule.
"""

from __future__ import annotations

import functools
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.distributed.param_and_grad_buffer import shard_buffer
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from nemo_ext.backends.base import Backend, LossFn, all_reduce_metrics, call_loss, reduce_metric
from nemo_ext.backends.compile import compile_layers, compiled_logprobs
from nemo_ext.backends.megatron import checkpoint
from nemo_ext.backends.megatron.context_parallel import gather_logprobs
from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.fallback_kernels import install_foreach_kernels, use_fused_torch_adam
from nemo_ext.backends.megatron.impl import choose_impl, gradient_accumulation_fusion_on
from nemo_ext.backends.megatron.layout import Layout, plan_layout
from nemo_ext.backends.megatron.micro import Micro, build_micros
from nemo_ext.backends.megatron.model import build_model_chunks, fuse_wgrad_accumulation, transformer_config
from nemo_ext.backends.megatron.vocab_parallel import vocab_parallel_logprobs
from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.config.schema import ModelConfig, OptimConfig, Precision, TrainerConfig
from nemo_ext.data.batch import PackedBatch
from nemo_ext.models.hf_config import load_hf_config, load_tokenizer, rope_theta_of


def init_distributed(device: torch.device | None = None) -> torch.device:
    """Join (or, run alone, create) the default process group; one CUDA device per process."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        raise RuntimeError("backend=megatron needs CUDA GPUs (megatron-core calls torch.cuda throughout); "
                           "use backend=torch on CPU")
    local_rank = device.index if device is not None and device.index is not None else \
        int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]),
                                  RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    return torch.device("cuda", local_rank)


def last_stage_logprobs(hidden_states: torch.Tensor, weight: torch.Tensor, micro: Micro, *, vocab_size: int,
                        temperature: float = 1.0, with_entropy: bool = False, sequence_parallel: bool = False,
                        chunk_tokens: int = 2048, compiled: bool = False, keep_logits: bool = False
                        ) -> torch.Tensor:
    """What the last pipeline stage computes (``GPTModel``'s ``output_processor``): final hidden states
    [T (/ TP under sequence parallelism), 1, H] and this TP rank's rows of the output embedding ->
    log-probs of ``micro``'s targets [T] float32, or with ``with_entropy`` log-probs and entropies
    (without gradient) stacked [2, T]. Under context parallelism T is the whole batch (gathered)."""
    tp_group = parallel_state.get_tensor_model_parallel_group()
    if sequence_parallel:
        hidden_states = tensor_parallel.gather_from_sequence_parallel_region(hidden_states, group=tp_group)
    else:
        hidden_states = tensor_parallel.copy_to_tensor_model_parallel_region(hidden_states, group=tp_group)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    logp, entropy = vocab_parallel_logprobs(
        hidden_states.squeeze(1), weight, micro.targets,
        vocab_start=parallel_state.get_tensor_model_parallel_rank() * weight.shape[0], vocab_size=vocab_size,
        temperature=temperature, chunk_tokens=chunk_tokens, group=tp_group if tp > 1 else None,
        with_entropy=with_entropy, compiled=compiled, keep_logits=keep_logits)
    if micro.shard is not None:  # this CP rank's tokens -> the whole batch, in its order
        cp_group = parallel_state.get_context_parallel_group()
        logp = gather_logprobs(logp, micro.shard, cp_group)
        entropy = gather_logprobs(entropy, micro.shard, cp_group) if with_entropy else None
    return torch.stack([logp, entropy]) if with_entropy else logp


def _finalize_grads(model, num_tokens=None, **kwargs):
    """megatron's grad all-reduce, without its 1/num_tokens scaling (our shares are pre-normalized)."""
    finalize_model_grads(model, None, **kwargs)


class MegatronBackend(Backend):
    """``Backend`` on megatron-core. ``load_weights=False`` keeps megatron's random initialization
    (benchmarks); otherwise the HF safetensors at ``model_path`` are imported. ``batch_sizes``:
    (packed bins per step over all ranks, bins per micro-batch) when the loop hands a fixed number of
    micro-batches per step (SFT's ``trainer.global_batch_size`` and ``micro_batch_size``), checked
    against the layout at start; None for a varying number (the RL loop's token-budgeted ones)."""

    def __init__(self, model_path: str, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, optim_cfg: OptimConfig,
                 schedule: LRSchedule, *, load_weights: bool = True, recompute: str | None = None,
                 device: torch.device | None = None, batch_sizes: tuple[int, int] | None = None,
                 tokenizer: str | None = None):
        self.device = init_distributed(device)
        self.model_path, self.model_cfg, self.optim_cfg = model_path, model_cfg, optim_cfg
        self.hf_config = load_hf_config(model_path, model_cfg.rope_theta, model_cfg.max_position_embeddings)
        self.shape = Shape.from_hf_config(self.hf_config)
        self.layout = self._init_parallel(trainer_cfg, batch_sizes)
        self.impl = choose_impl(model_cfg)
        self.te = self.impl == "transformer_engine"
        bf16 = trainer_cfg.precision == Precision.bf16
        if recompute is None and trainer_cfg.activation_checkpointing:
            recompute = "full"
        self.config = transformer_config(self.shape, self.hf_config, model_cfg, self.layout, impl=self.impl,
                                         bf16=bf16, recompute=recompute, init_weights=not load_weights)
        self.config.finalize_model_grads_func = _finalize_grads
        self.chunks = build_model_chunks(self.shape, self.hf_config, self.config, self.impl)
        if gradient_accumulation_fusion_on(model_cfg, self.impl):
            fuse_wgrad_accumulation(self.chunks)
        self.rope = None if self.te else (self.shape.head_dim, rope_theta_of(self.hf_config),
                                          self.config.params_dtype)
        for chunk in self.chunks:
            chunk.to(self.device)
            if trainer_cfg.compile:  # as the torch backend: each decoder layer, dynamic shapes
                compile_layers(chunk.decoder.layers, trainer_cfg.activation_memory_budget)
        if load_weights:
            checkpoint.load_hf_weights(self.chunks, self.shape, self.layout, model_path)
        wrapped = [Float16Module(self.config, c) if bf16 else c for c in self.chunks]
        self.ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True)
        self.model = [DistributedDataParallel(self.config, self.ddp_config, m, disable_bucketing=i > 0)
                      for i, m in enumerate(wrapped)]
        self.pad_multiple = math.lcm(self.layout.pad_multiple(), 16 if model_cfg.fp8 else 1)  # FP8 GEMMs: 16 rows
        self.chunk_tokens = model_cfg.logits_chunk_tokens
        self.grad_clip, self.bf16 = trainer_cfg.grad_clip, bf16
        self.compiled_logprobs = compiled_logprobs(trainer_cfg, self.device)
        self.reset_optimizer(schedule)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_world_size = parallel_state.get_data_parallel_world_size()
        self.dp_group = parallel_state.get_data_parallel_group()
        try:
            self.tokenizer = load_tokenizer(tokenizer or model_path)
        except FileNotFoundError:
            if load_weights:
                raise
            self.tokenizer = None  # random weights from a config-only directory (benchmarks): none to export

    def _init_parallel(self, trainer_cfg: TrainerConfig, batch_sizes: tuple[int, int] | None) -> Layout:
        m = self.model_cfg
        # A process that sees one GPU may be pinned to it (the RL loop pins each rank's GPU for its
        # vLLM engine): the node's count is then unknown here, and a missing GPU failed before.
        visible = torch.cuda.device_count()
        gpus = visible * trainer_cfg.num_nodes if visible > 1 or dist.get_world_size() == 1 else None
        layout = plan_layout(
            self.shape, world_size=dist.get_world_size(), gpus_present=gpus,
            tp=m.tensor_model_parallel_size, pp=m.pipeline_model_parallel_size, cp=m.context_parallel_size,
            vpp=m.virtual_pipeline_model_parallel_size, sequence_parallel=m.sequence_parallel,
            global_batch_size=batch_sizes[0] if batch_sizes else None,
            micro_batch_size=batch_sizes[1] if batch_sizes else 1)
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
                virtual_pipeline_model_parallel_size=layout.vpp, context_parallel_size=layout.cp)
        tensor_parallel.model_parallel_cuda_manual_seed(trainer_cfg.seed)
        return layout

    # -- optimizer -------------------------------------------------------------------------------

    def reset_optimizer(self, schedule: LRSchedule) -> None:
        o = self.optim_cfg
        config = OptimizerConfig(optimizer="adam", lr=schedule.lr, min_lr=schedule.min_lr, weight_decay=o.weight_decay,
                                 adam_beta1=o.beta1, adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=self.grad_clip,
                                 bf16=self.bf16, params_dtype=self.config.params_dtype,
                                 use_distributed_optimizer=True)
        install_foreach_kernels()
        self.optimizer = get_megatron_optimizer(config, self.model)
        use_fused_torch_adam(self.optimizer)
        self.schedule, self.step = schedule, 0

    # -- forward / backward ----------------------------------------------------------------------

    def _output_processor(self, *, hidden_states, output_layer, output_weight, context, **_):
        micro, temperature, with_entropy = context
        weight = output_weight if output_weight is not None else output_layer.weight
        return last_stage_logprobs(hidden_states, weight, micro, vocab_size=self.shape.vocab, temperature=temperature,
                                   with_entropy=with_entropy, sequence_parallel=self.config.sequence_parallel,
                                   chunk_tokens=self.chunk_tokens, compiled=self.compiled_logprobs,
                                   keep_logits=self.model_cfg.keep_logits)

    def _micros(self, micro_batches: list[PackedBatch]) -> list[Micro]:
        cp_rank = parallel_state.get_context_parallel_rank() if self.layout.cp > 1 else 0
        return build_micros(micro_batches, self.layout, self.pad_multiple, self.device, self.rope, cp_rank)

    def _schedule(self, micros: list[Micro], loss_fn: LossFn | None, temperature: float, with_entropy: bool):
        """Run megatron's forward-backward schedule; returns the last stage's per-micro-batch dicts.
        ``loss_fn`` None: the forward-only log-prob pass (``with_entropy`` then True)."""

        def loss_func(micro: Micro, output):
            n = micro.batch.num_tokens
            logp, entropy = (output[0, :n], output[1, :n].detach()) if with_entropy else (output[:n], None)
            if loss_fn is None:  # log-probs only
                return output.sum() * 0, torch.zeros((), dtype=torch.int, device=self.device), \
                    {"logp": logp.detach(), "entropy": entropy}
            loss, metrics = call_loss(loss_fn, logp, micro.batch, entropy)
            num = micro.batch.loss_mask.sum().to(torch.int)  # on the device: no host sync mid-step
            return loss, num, {"loss": loss.detach(), **{k: v.detach() for k, v in metrics.items()}}

        def forward_step(data_iterator, model):
            micro = next(data_iterator)
            out = model(micro.input_ids, micro.position_ids, None, packed_seq_params=micro.packed,
                        output_processor=self._output_processor,
                        output_processor_context=(micro, temperature, with_entropy))
            return out, functools.partial(loss_func, micro)

        iters = [iter(micros) for _ in self.model]
        return get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iters if len(iters) > 1 else iters[0],
            model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=len(micros),
            seq_length=max(m.input_ids.shape[1] for m in micros) * self.layout.cp,  # megatron divides by CP
            micro_batch_size=1, forward_only=loss_fn is None)

    def forward_backward(self, micro_batches: list[PackedBatch], loss_fn: LossFn, temperature: float,
                         with_entropy: bool = False) -> dict[str, float]:
        """Gradients of the summed loss shares in the parameters' ``main_grad`` (reduced over DP), no
        optimizer step. Returns the reduced ``loss`` and metrics, as ``train_step`` does."""
        return self._reduce_over_replicas(self._backward(micro_batches, loss_fn, temperature, with_entropy))

    def train_step(self, micro_batches: list[PackedBatch], loss_fn: LossFn, temperature: float,
                   with_entropy: bool = False) -> dict:
        totals = self._backward(micro_batches, loss_fn, temperature, with_entropy)
        lr = self.schedule.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, grad_norm, _ = self.optimizer.step()
        self.step += 1
        # Only now read results back: a host sync before the step would leave the GPU idle while
        # Python queues the optimizer's work.
        return {**self._reduce_over_replicas(totals), "grad_norm": float(grad_norm), "lr": lr}

    def _backward(self, micro_batches: list[PackedBatch], loss_fn: LossFn, temperature: float, with_entropy: bool
                  ) -> dict[str, torch.Tensor]:
        """Zero the gradient buffers, run the schedule; the last stage's metrics reduced over the
        micro-batches (``reduce_metric``), on device."""
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        outputs = self._schedule(self._micros(micro_batches), loss_fn, temperature, with_entropy)
        totals = {}
        for out in outputs:
            for k, v in out.items():
                totals[k] = reduce_metric(k, totals.get(k), v)
        return totals

    def _reduce_over_replicas(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Reduce the last stage's values over data-parallel ranks (``all_reduce_metrics``; CP ranks
        hold the same values: each computed the loss of the whole batch); every rank gets the result."""
        names = [sorted(totals)]
        last = parallel_state.get_pipeline_model_parallel_world_size() - 1
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        src = dist.get_global_rank(pp_group, last)
        if self.layout.pp > 1:
            dist.broadcast_object_list(names, src=src, group=pp_group)
        stacked = torch.stack([totals[k] for k in names[0]]) if totals else \
            torch.zeros(len(names[0]), device=self.device)
        all_reduce_metrics(stacked, names[0], parallel_state.get_data_parallel_group(with_context_parallel=False))
        if self.layout.pp > 1:
            dist.broadcast(stacked, src=src, group=pp_group)
        return dict(zip(names[0], stacked.tolist(), strict=True))

    @torch.no_grad()
    def logprobs(self, micro_batches: list[PackedBatch], temperature: float):
        for m in self.model:
            m.eval()
        micros = self._micros(micro_batches)
        # megatron's interleaved schedule wants at least PP micro-batches: repeat the last (results dropped).
        extra = max(0, self.layout.pp - len(micros)) if self.layout.vpp else 0
        outputs = self._schedule(micros + micros[-1:] * extra, None, temperature, with_entropy=True)
        results = []
        for i, micro in enumerate(micros):
            both = torch.stack([outputs[i]["logp"], outputs[i]["entropy"]]) if outputs else \
                torch.empty(2, micro.batch.num_tokens, device=self.device)
            if self.layout.pp > 1:
                pp_group = parallel_state.get_pipeline_model_parallel_group()
                dist.broadcast(both, src=dist.get_global_rank(pp_group, self.layout.pp - 1), group=pp_group)
            results.append((both[0].float().cpu(), both[1].float().cpu()))
        return results

    # -- weights and checkpoints -------------------------------------------------------------------

    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return checkpoint.hf_weights(self.chunks, self.shape, self.layout, te=self.te)

    def hf_grads(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Like ``hf_weights``, for the fp32 gradients ``forward_backward`` left (tests). Collective."""
        self._gather_reduced_grads()
        return checkpoint.hf_weights(self.chunks, self.shape, self.layout, te=self.te,
                                     tensor_of=lambda p: p.main_grad)

    def _gather_reduced_grads(self) -> None:
        """The distributed optimizer reduce-scatters gradients over DP x CP: each rank's buffers then
        hold the summed gradient only in its own shard. All-gather the shards so every ``main_grad``
        is whole (before any optimizer step, which would overwrite the buffers)."""
        for ddp in self.model:
            for group in ddp.bucket_groups:
                size = group.intra_distributed_optimizer_instance_size
                if size == 1:
                    continue
                shard = group.intra_distributed_optimizer_instance_rank
                for bucket in group.buckets:
                    mine = shard_buffer(bucket.grad_data, size)[shard].clone()
                    dist.all_gather_into_tensor(bucket.grad_data, mine,
                                                group=group.intra_distributed_optimizer_instance_group)

    def export_hf(self, path: Path) -> None:
        checkpoint.export_hf(self.hf_weights(), self.hf_config, self.tokenizer, Path(path),
                             dtype=self.config.params_dtype, source_dir=self.model_path)

    def save(self, path: Path, extra_state: dict) -> None:
        checkpoint.save(self, Path(path), {"extra": extra_state, "step": self.step, "schedule": asdict(self.schedule)})

    def load(self, path: Path) -> dict:
        state = checkpoint.load(self, Path(path))
        use_fused_torch_adam(self.optimizer)
        self.step, self.schedule = state["step"], LRSchedule(**state["schedule"])
        return state["extra"]

