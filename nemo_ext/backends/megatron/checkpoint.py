"""Megatron weights in and out: HF import, the streaming ``hf_weights()`` iterator, HF export, and
megatron-core distributed checkpoints (model + distributed-optimizer state).

Distributed checkpoints store every tensor by its global shape and offsets (``sharded_state_dict``;
the optimizer in megatron's ``fully_reshardable`` format), so a checkpoint saved at one
TP / PP / DP layout loads at another. ``save`` writes into the directory it is given; the caller
(``nemo_ext.checkpoint.CheckpointManager``) renames it into place once every rank is done, so a
killed run leaves either the previous checkpoint or the new one.

Round trips: import then export reproduces the HF tensors exactly when the parameters keep the HF
dtype (bf16 checkpoints with precision=bf16, fp32 ones with precision=fp32); an fp32 checkpoint
trained in bf16 is exported in bf16.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from safetensors import safe_open

from nemo_ext.backends.megatron import convert
from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.layout import Layout
from nemo_ext.io import atomic_dir, atomic_write_json

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True,
            "singleton_local_shards": False}


def _chunk_offsets(chunks, shape: Shape, layout: Layout) -> list[int]:
    """Global number of each chunk's first layer (and a check that megatron agrees)."""
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    offsets = []
    for vp, chunk in enumerate(chunks):
        layers = convert.stage_layers(shape.num_layers, layout.pp, pp_rank, layout.vpp or 1, vp)
        megatron_first = chunk.decoder.layers[0].layer_number - 1
        if megatron_first != layers.start:
            raise RuntimeError(f"megatron put layer {megatron_first} first in chunk {vp}, expected {layers.start}")
        offsets.append(layers.start)
    return offsets


class _HFReader:
    """Tensors of a HF safetensors directory, read one at a time by name."""

    def __init__(self, path: str | Path):
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: path / f for name, f in weight_map.items()}
        else:
            single = path / "model.safetensors"
            if not single.exists():
                raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
            with safe_open(single, "pt") as f:
                self.files = {name: single for name in f.keys()}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.files:
            files = sorted({str(f) for f in self.files.values()})
            raise KeyError(f"HF checkpoint has no tensor {name!r} (files: {files})")
        with safe_open(self.files[name], "pt") as f:
            return f.get_tensor(name)


@torch.no_grad()
def load_hf_weights(chunks, shape: Shape, layout: Layout, path: str | Path) -> None:
    """Copy this rank's TP shard of every parameter of its chunks from the HF checkpoint at ``path``."""
    read = _HFReader(path)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for chunk, offset in zip(chunks, _chunk_offsets(chunks, shape, layout), strict=True):
        for local, param in chunk.named_parameters():
            name = convert.local_to_global(local, offset)
            if name == "output_layer.weight" and shape.tie_embeddings:
                name = "embedding.word_embeddings.weight"  # the last stage's copy of a tied embedding
            full = convert.to_megatron(name, read, shape)
            shard = convert.split_tp(name, full, layout.tp)[tp_rank]
            if shard.shape != param.shape:
                raise ValueError(f"{path}: {name} TP shard has shape {tuple(shard.shape)}, model expects "
                                 f"{tuple(param.shape)}")
            param.copy_(shard)


@torch.no_grad()
def hf_weights(chunks, shape: Shape, layout: Layout, te: bool,
               tensor_of: Callable[[torch.nn.Parameter], torch.Tensor] = lambda p: p
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """Full tensors under HF names, one megatron tensor at a time; collective over the model-parallel
    group (every TP / PP rank must iterate it to the end). ``tensor_of`` picks what of each parameter
    is gathered (the weight, or its ``main_grad``).

    The owning stage all-gathers the TP shards and broadcasts the full tensor to the other pipeline
    stages, so each rank holds at most one full tensor beyond its own shards.
    """
    tp_group, pp_group = (parallel_state.get_tensor_model_parallel_group(),
                          parallel_state.get_pipeline_model_parallel_group())
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    params = [{n: tensor_of(p) for n, p in c.named_parameters()} for c in chunks]
    offsets = _chunk_offsets(chunks, shape, layout)
    dtype, device = next(iter(params[0].values())).dtype, next(iter(params[0].values())).device
    for name in convert.megatron_param_names(shape, te):
        stage, vp = convert.owner(name, shape.num_layers, layout.pp, layout.vpp or 1)
        if stage == pp_rank:
            local = params[vp][convert.global_to_local(name, offsets[vp])]
            if layout.tp > 1:
                shards = [torch.empty_like(local) for _ in range(layout.tp)]
                dist.all_gather(shards, local.contiguous(), group=tp_group)
                full = convert.merge_tp(name, shards)
            else:
                full = local.detach()
        else:
            full = torch.empty(convert.full_shape(name, shape), dtype=dtype, device=device)
        if layout.pp > 1:
            dist.broadcast(full, src=dist.get_global_rank(pp_group, stage), group=pp_group)
        yield from convert.to_hf(name, full, shape)


def export_hf(weights: Iterator[tuple[str, torch.Tensor]], hf_config, tokenizer, path: Path, *,
              dtype: torch.dtype, source_dir: str | Path | None = None) -> None:
    """Write a HF directory (safetensors + config + tokenizer) atomically; collective, rank 0 writes."""
    from huggingface_hub import save_torch_state_dict

    rank0 = dist.get_rank() == 0
    state = {}
    for name, t in weights:  # every rank drains the (collective) iterator; rank 0 keeps a CPU copy
        if rank0:
            state[name] = t.to("cpu", copy=True)
    if not rank0:
        dist.barrier()
        return
    with atomic_dir(path) as tmp:
        save_torch_state_dict(state, tmp, max_shard_size="5GB")
        hf_config.dtype = dtype
        hf_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        generation = Path(source_dir or "") / "generation_config.json"
        if source_dir is not None and generation.exists():
            shutil.copy(generation, tmp / "generation_config.json")
    dist.barrier()


def _sharded_state(backend, is_loading: bool) -> dict:
    model = {}
    for i, chunk in enumerate(backend.chunks):
        key = f"model{i}" if len(backend.chunks) > 1 else "model"
        model[key] = chunk.sharded_state_dict(metadata=SHARDING)
    merged = {k: v for sd in model.values() for k, v in sd.items()}
    optimizer = backend.optimizer.sharded_state_dict(merged, is_loading=is_loading, metadata=SHARDING)
    return {**model, "optimizer": optimizer}


def save(backend, path: Path, trainer_state: dict) -> None:
    """Model, optimizer and ``trainer_state`` under ``path`` (new or empty). Collective."""
    if dist.get_rank() == 0:
        (path / "megatron").mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(_sharded_state(backend, is_loading=False), str(path / "megatron"))
    if dist.get_rank() == 0:
        layout = backend.layout
        torch.save(trainer_state, path / "trainer_state.pt")
        atomic_write_json(path / "layout.json", {"tp": layout.tp, "pp": layout.pp, "cp": layout.cp,
                                                 "dp": layout.dp, "vpp": layout.vpp})
    dist.barrier()


def _prime_optimizer_state(optimizer) -> None:
    """megatron 0.19 on torch's Adam (no apex / TE) reads ``step`` from the per-parameter state while
    building the state dict to load into, which a fresh optimizer lacks: give it zeros (overwritten)."""
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                state = opt.optimizer.state[p]
                if "step" not in state:
                    state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))


def _load_optimizer(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` plus two fixes for megatron 0.19's torch-Adam path (no apex / TE):
    its ``fully_reshardable`` loader looks up a ``step`` entry the saved parameter state never has,
    and it hands every parameter one shared ``step`` tensor, which torch's foreach Adam would then
    increment once per parameter per step."""
    from megatron.core.optimizer import distrib_optimizer

    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    if distrib_optimizer.HAVE_APEX_OR_TE:
        optimizer.load_state_dict(state)
        return
    for opt in opts:
        set_states = opt._set_main_param_and_optimizer_states

        def with_step(model_param, tensors, opt=opt, set_states=set_states):
            group, order = opt.model_param_group_index_map[model_param]
            step = opt.optimizer.state[opt.optimizer.param_groups[group]["params"][order]].get("step")
            set_states(model_param, tensors if step is None else {**tensors, "step": step})

        opt._set_main_param_and_optimizer_states = with_step
    try:
        optimizer.load_state_dict(state)
    finally:
        for opt in opts:
            del opt._set_main_param_and_optimizer_states
    for opt in opts:
        for param_state in opt.optimizer.state.values():
            if "step" in param_state:
                param_state["step"] = param_state["step"].clone()


def load(backend, path: Path) -> dict:
    """Restore what ``save`` wrote, at this run's layout (may differ from the saved one)."""
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"{path}: not a complete megatron checkpoint (no trainer_state.pt)")
    _prime_optimizer_state(backend.optimizer)
    state = load_sharded(_sharded_state(backend, is_loading=True), path / "megatron")
    for i, chunk in enumerate(backend.chunks):
        load_chunk_state(chunk, state[f"model{i}" if len(backend.chunks) > 1 else "model"])
    _load_optimizer(backend.optimizer, state["optimizer"])
    return torch.load(path / "trainer_state.pt", weights_only=False)


# Transformer Engine's modules keep their FP8 metadata (scales, amax history) as ``_extra_state``,
# which a checkpoint written under the local layer spec does not have; TE's fresh values are the
# right start for it. Every other tensor must be in the checkpoint.
EXTRA_STATE = "_extra_state"


def load_sharded(request: dict, directory: Path) -> dict:
    """``dist_checkpointing.load`` of ``request`` from ``directory``, where the checkpoint may lack
    ``_extra_state`` entries (written under the other layer spec); anything else it lacks raises."""
    from megatron.core.dist_checkpointing.validation import StrictHandling

    state, _, absent = dist_checkpointing.load(request, str(directory), strict=StrictHandling.RETURN_UNEXPECTED)
    missing = sorted(k for k in absent if not k.endswith(EXTRA_STATE))
    if missing:
        raise RuntimeError(f"{directory}: the checkpoint lacks {len(missing)} entries this model needs, e.g. "
                           f"{missing[:3]} (written for another model shape or layout?)")
    return state


def load_chunk_state(chunk, state: dict) -> None:
    """``chunk.load_state_dict(state)``, tolerating only absent ``_extra_state`` entries (``load_sharded``)."""
    result = chunk.load_state_dict(state, strict=False)
    wrong = [k for k in result.missing_keys if not k.endswith(EXTRA_STATE)] + list(result.unexpected_keys)
    if wrong:
        raise RuntimeError(f"checkpoint and model disagree on {wrong[:5]} ({len(wrong)} in all)")

