"""The torch backend: any Hugging Face causal LM, DDP or FSDP2, packed varlen batches.

Parallelism is applied to the plain HF model by small functions (FSDP2 per decoder layer, or DDP),
never woven into the model. Precision: parameters and optimizer state stay fp32; on GPU the compute
runs in bf16 (FSDP2's mixed-precision policy, or autocast without FSDP). Loss and log-probs go
through ``token_logprobs`` so full-vocabulary logits of a long sequence never exist at once.
``trainer.compile`` compiles each decoder layer and the log-prob chunk with dynamic shapes (one graph
for every packed length): it fuses the norms, RoPE, SwiGLU and log-softmax, and the smaller saved
activations let 16K-token bins of a 1.5B model train without recompute (docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from transformers import AutoModelForCausalLM

from nemo_ext.backends.attention import attention_name, packed_attention_kwargs
from nemo_ext.backends.base import Backend, LossFn, all_reduce_metrics, call_loss, reduce_metric
from nemo_ext.backends.compile import compile_layers, compiled_logprobs
from nemo_ext.backends.logprobs import token_logprobs
from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.config.schema import ModelConfig, OptimConfig, Precision, TrainerConfig
from nemo_ext.data.batch import PackedBatch
from nemo_ext.io import atomic_dir
from nemo_ext.models.hf_config import load_hf_config, load_tokenizer

log = logging.getLogger(__name__)
CPU = torch.device("cpu")


class TokenLogprobModel(torch.nn.Module):
    """A HF causal LM whose forward returns per-token log-probs of the targets of a packed row.

    Wrapping the whole computation in one module lets FSDP2 / DDP hooks see the output embedding
    used (FSDP2 unshards it in this module's forward).
    """

    def __init__(self, hf_model: torch.nn.Module, chunk_tokens: int, compiled: bool = False,
                 keep_logits: bool = False):
        super().__init__()
        self.hf_model = hf_model
        self.chunk_tokens = chunk_tokens
        self.compiled, self.keep_logits = compiled, keep_logits

    def forward(self, batch: PackedBatch, temperature: float, with_entropy: bool = False):
        hidden = self.hf_model.model(
            input_ids=batch.input_ids[None],
            position_ids=batch.position_ids[None],
            use_cache=False,
            **packed_attention_kwargs(batch.cu_seqlens, batch.max_seqlen),
        ).last_hidden_state[0]
        weight = self.hf_model.get_output_embeddings().weight
        return token_logprobs(hidden, weight, batch.targets, temperature, self.chunk_tokens, with_entropy,
                              compiled=self.compiled, keep_logits=self.keep_logits)


def load_hf_model(model_cfg: ModelConfig, path: str, device: torch.device = CPU,
                  compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The HF model at ``path`` in fp32, with the config overrides of ``model_cfg`` applied and the
    packed attention that ``model.attn_implementation`` names for computing in ``compute_dtype`` on
    ``device``."""
    config = load_hf_config(path, model_cfg.rope_theta, model_cfg.max_position_embeddings)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    attention = attention_name(model_cfg.attn_implementation, device_type=device.type, dtype=compute_dtype,
                               compute_capability=capability)
    log.info("model.attn_implementation=%s: %s", model_cfg.attn_implementation, attention)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32, attn_implementation=attention)


class TorchBackend(Backend):
    def __init__(self, model_path: str, model_cfg: ModelConfig, trainer_cfg: TrainerConfig,
                 optim_cfg: OptimConfig, schedule: LRSchedule, device: torch.device, tokenizer: str | None = None):
        self.device = device
        self.model_path = model_path
        self.optim_cfg = optim_cfg
        self.grad_clip = trainer_cfg.grad_clip
        self.distributed = dist.is_available() and dist.is_initialized()
        self.dp_world_size = dist.get_world_size() if self.distributed else 1
        self.dp_rank = dist.get_rank() if self.distributed else 0
        self.compute_dtype = torch.bfloat16 if (device.type == "cuda" and trainer_cfg.precision == Precision.bf16) \
            else torch.float32
        self.tokenizer = load_tokenizer(tokenizer or model_path)

        self.hf_model = load_hf_model(model_cfg, model_path, device, self.compute_dtype).to(device)
        self.hf_config = self.hf_model.config
        if trainer_cfg.activation_checkpointing:
            self.hf_model.gradient_checkpointing_enable({"use_reentrant": False})
        self.module = TokenLogprobModel(self.hf_model, model_cfg.logits_chunk_tokens,
                                        compiled_logprobs(trainer_cfg, device), model_cfg.keep_logits)
        self.fsdp = self.distributed and device.type == "cuda" and trainer_cfg.fsdp
        self.model = self._parallelize(self.module, trainer_cfg)
        self.reset_optimizer(schedule)

    @property
    def attention(self) -> str:
        """The registered packed attention the model runs: ``model.attn_implementation`` as resolved at load."""
        return self.hf_config._attn_implementation

    def _parallelize(self, module: TokenLogprobModel, trainer_cfg: TrainerConfig) -> torch.nn.Module:
        if trainer_cfg.compile:
            compile_layers(module.hf_model.model.layers, trainer_cfg.activation_memory_budget)
        if self.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
            reshard = self.dp_world_size > 1  # one rank: keep the bf16 copy for the backward, nothing to free
            for layer in module.hf_model.model.layers:
                fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard)
            return fully_shard(module, mp_policy=mp, reshard_after_forward=reshard)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def reset_optimizer(self, schedule: LRSchedule) -> None:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.optim_cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=(self.optim_cfg.beta1, self.optim_cfg.beta2),
                                           eps=self.optim_cfg.eps, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.factor)

    def _autocast(self):
        enabled = self.compute_dtype != torch.float32 and not self.fsdp
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled)

    def _set_grad_sync(self, enabled: bool) -> None:
        if self.fsdp:
            self.model.set_requires_gradient_sync(enabled)
        elif isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            self.model.require_backward_grad_sync = enabled

    def train_step(self, micro_batches: list[PackedBatch], loss_fn: LossFn, temperature: float,
                   with_entropy: bool = False) -> dict:
        self.model.train()
        totals: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro_batches):
            mb = mb.to(self.device)
            self._set_grad_sync(i == len(micro_batches) - 1)
            with self._autocast():
                logp, entropy = self.model(mb, temperature, with_entropy)
            loss, metrics = call_loss(loss_fn, logp, mb, entropy)
            # DDP and FSDP average gradients over ranks; the loss share is already globally normalized.
            (loss * self.dp_world_size).backward()
            for k, v in {"loss": loss, **metrics}.items():
                totals[k] = reduce_metric(k, totals.get(k), v)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = self._all_reduce(totals)
        out.update(grad_norm=float(grad_norm), lr=lr)
        return out

    def _all_reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        names = sorted(values)
        if not names:
            return {}
        stacked = torch.stack([torch.as_tensor(values[n], device=self.device).float() for n in names])
        if self.distributed:
            all_reduce_metrics(stacked, names)
        return dict(zip(names, stacked.tolist(), strict=True))

    @torch.no_grad()
    def logprobs(self, micro_batches: list[PackedBatch], temperature: float):
        self.model.eval()
        out = []
        for mb in micro_batches:
            with self._autocast():
                logp, entropy = self.model(mb.to(self.device), temperature, with_entropy=True)
            out.append((logp.float().cpu(), entropy.float().cpu()))
        return out

    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.hf_model.state_dict().items():
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            yield name, tensor.detach()

    def save(self, path: Path, extra_state: dict) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
        if self.dp_rank == 0:
            torch.save({"scheduler": self.scheduler.state_dict(), "extra": extra_state}, path / "trainer_state.pt")

    def load(self, path: Path) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        trainer_state = torch.load(path / "trainer_state.pt", weights_only=False)
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        return trainer_state["extra"]

    def export_hf(self, path: Path) -> None:
        """Rank 0 writes ``path`` atomically (a sibling temp dir renamed into place)."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dp_rank != 0:
            return
        prefix = "hf_model."
        state = {k.removeprefix("module.").removeprefix(prefix): v for k, v in full.items()}
        with atomic_dir(path) as tmp:
            self.hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
