"""The parallel layout of a megatron run, checked before anything is built.

world = TP x PP x CP x DP. Every constraint megatron-core would trip over later (often deep inside a
collective, as a hang or a shape error) is checked here, at start, with the numbers in the message.
Pure Python: CPU CI tests it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_ext.backends.megatron.convert import Shape


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    dp: int
    vpp: int | None = None  # virtual pipeline stages (model chunks) per pipeline rank
    sequence_parallel: bool = False

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def pad_multiple(self) -> int:
        """Packed rows are padded to a multiple of this: sequence parallelism splits tokens over TP."""
        return self.tp if self.sequence_parallel and self.tp > 1 else 1


def plan_layout(shape: Shape, *, world_size: int, gpus_present: int | None, tp: int, pp: int, cp: int,
                vpp: int | None, sequence_parallel: bool, global_batch_size: int | None,
                micro_batch_size: int) -> Layout:
    """The layout for ``world_size`` processes, or ValueError naming every violated constraint.

    gpus_present: GPUs of all nodes (None: not checked). global_batch_size: micro-batches per step
    (None: a varying number, as RL's, which rules out virtual pipeline stages).
    """
    errors = []
    for key, value in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp),
                       ("context_parallel_size", cp)):
        if value < 1:
            errors.append(f"model.{key}={value} must be >= 1")
    if errors:
        raise ValueError("invalid megatron layout: " + "; ".join(errors))
    model_parallel = tp * pp * cp
    if world_size % model_parallel:
        errors.append(f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp} = "
                      f"{model_parallel}")
    if gpus_present is not None and world_size > gpus_present:
        errors.append(f"{world_size} processes need {world_size} GPUs but {gpus_present} are present")
    if shape.num_heads % tp:
        errors.append(f"num_attention_heads={shape.num_heads} is not divisible by "
                      f"tensor_model_parallel_size={tp}")
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        errors.append(f"num_key_value_heads={shape.num_kv_heads} must be a multiple or a divisor of "
                      f"tensor_model_parallel_size={tp}")
    if shape.ffn % tp:
        errors.append(f"intermediate_size={shape.ffn} is not divisible by tensor_model_parallel_size={tp}")
    stages = pp * (vpp or 1)
    if shape.num_layers % stages:
        errors.append(f"num_hidden_layers={shape.num_layers} is not divisible by pipeline stages "
                      f"PP x VPP = {pp} x {vpp or 1} = {stages}")
    if vpp is not None and (vpp < 1 or pp < 2):
        errors.append(f"virtual_pipeline_model_parallel_size={vpp} needs pipeline_model_parallel_size >= 2 "
                      f"(got {pp})")
    if sequence_parallel and tp == 1:
        errors.append("sequence_parallel=true needs tensor_model_parallel_size > 1")
    dp = max(1, world_size // model_parallel)
    if global_batch_size is None:
        if vpp is not None:
            errors.append(f"virtual_pipeline_model_parallel_size={vpp} needs at least PP={pp} micro-batches "
                          "per step, and this loop's count varies (RL): leave it null")
    elif global_batch_size % (dp * micro_batch_size):
        errors.append(f"trainer.global_batch_size={global_batch_size} is not divisible by DP x micro batch = "
                      f"{dp} x {micro_batch_size} = {dp * micro_batch_size}")
    elif vpp is not None and global_batch_size // (dp * micro_batch_size) < pp:
        errors.append(f"virtual pipeline stages need at least PP={pp} micro-batches per step, got "
                      f"global_batch_size / (DP x micro batch) = {global_batch_size // (dp * micro_batch_size)}")
    if errors:
        raise ValueError("invalid megatron layout: " + "; ".join(errors))
    return Layout(tp=tp, pp=pp, cp=cp, dp=dp, vpp=vpp, sequence_parallel=sequence_parallel)
