"""Typed schemas of the recipe YAML (``recipes/conf``), one dataclass per section.

Hydra merges the YAML and command-line overrides into these structured configs, so an unknown key
or an ill-typed value fails before any work starts, with a message that names the key and the
expected type or the allowed values. The sections both runs share (``TrainerConfig``, ``ModelConfig``,
``OptimConfig``, ``CheckpointConfig``, ``LoggingConfig``: what the backends and the loops' common
plumbing read) are the RL schema's as they are; SFT's sections extend them with the keys only SFT
reads (``SFT*Config``). Every default here is the embedded CPU demo's; the paper's values live in
``recipes/conf/sft/acereason_7b.yaml`` with their sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

Rule = tuple[Callable[[object], bool], str]  # (check of a value, what it must be)
AT_LEAST_0: Rule = (lambda v: v >= 0, "an integer >= 0")
AT_LEAST_1: Rule = (lambda v: v >= 1, "an integer >= 1")
POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
BETA: Rule = (lambda v: 0 <= v < 1, "in [0, 1)")


def check_values(section: str, config, **rules: Rule) -> None:
    """Raise ValueError "<section>.<key> must be <what>, got <value>" for the first field of ``config``
    that breaks its rule: values no run could use fail when the config is loaded, naming the key."""
    for name, (ok, what) in rules.items():
        value = getattr(config, name)
        if value is not None and not ok(value):
            raise ValueError(f"{section}.{name} must be {what}, got {value!r}")


class Accelerator(StrEnum):
    auto = "auto"  # cuda when available, else cpu
    cpu = "cpu"
    gpu = "gpu"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # bf16 compute with fp32 master weights and optimizer state


class BackendName(StrEnum):
    torch = "torch"
    megatron = "megatron"


class ResumeMode(StrEnum):
    auto = "auto"  # continue from the newest complete checkpoint in checkpoint.dir, if any
    never = "never"


@dataclass
class TrainerConfig:
    """How the policy trains, for SFT and RL alike (the backends read this section)."""

    devices: int = 1  # worker processes on this node; >1 self-launches through torch elastic
    num_nodes: int = 1  # checked against SLURM_NNODES when under SLURM
    accelerator: Accelerator = Accelerator.auto
    precision: Precision = Precision.bf16  # fp32 on CPU regardless (bf16 matmuls are slow there)
    grad_clip: float = 1.0
    seed: int = 1234
    activation_checkpointing: bool = False
    fsdp: bool = True  # FSDP2 across GPUs; CPU runs always use DDP (gloo)
    compile: bool = False  # torch.compile each decoder layer and the log-prob chunks (dynamic shapes)
    # torch.compile the log-prob chunk kernels alone: None = with `compile`, and on every GPU run (their
    # backward: 85 -> 43 ms of a 1.5B megatron step, docs/performance.md); false where the vocabulary is
    # small (the tiny model's: microseconds a chunk), which saves their compiles at every process start.
    compile_logprobs: bool | None = None
    # With compile: the fraction of the activations the backward would keep that the compiled graphs
    # may keep; below 1, torch's min-cut partitioner recomputes the cheapest ops (pointwise first) in
    # the backward pass instead of storing their outputs (torch._functorch.config.activation_memory_budget).
    activation_memory_budget: float = 1.0

    def __post_init__(self):
        check_values("trainer", self, devices=AT_LEAST_1, num_nodes=AT_LEAST_1, grad_clip=POSITIVE,
                     activation_memory_budget=(lambda v: 0 < v <= 1, "in (0, 1]"))


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """SFT's trainer: the shared keys plus the run's length and its batches of packed bins."""

    max_steps: int = 300  # optimizer steps; -1 = run `epochs` epochs
    epochs: int = 1
    global_batch_size: int = 16  # packed bins per optimizer step, over all data-parallel ranks
    micro_batch_size: int = 1  # packed bins per forward/backward
    # Steps between Python garbage collections (the automatic collector is off in the step loop, and
    # what exists when it starts is frozen: nemo_ext/garbage_collection.py); 0 = Python's collector.
    # 100: NeMo's GarbageCollectionCallback default; Megatron-LM's --manual-gc does the same.
    gc_interval: int = 100

    def __post_init__(self):
        super().__post_init__()
        check_values("trainer", self, epochs=AT_LEAST_1, global_batch_size=AT_LEAST_1, micro_batch_size=AT_LEAST_1,
                     gc_interval=AT_LEAST_0,
                     max_steps=(lambda v: v == -1 or v >= 1, "-1 (run `epochs` epochs) or an integer >= 1"))
        check_values("trainer", self, micro_batch_size=(lambda v: v <= self.global_batch_size,
                                                        f"at most global_batch_size={self.global_batch_size}"))


@dataclass
class ModelConfig:
    """The policy model as the backends build it (the weights' path is the run's: SFT's
    ``model.name_or_path``, RL's ``policy.init``)."""

    rope_theta: float | None = None  # override the config's RoPE base (the paper: 1e6 for 128K context)
    max_position_embeddings: int | None = None
    # torch backend's packed attention: varlen = torch's flash-attention varlen kernel on GPU (exact
    # per-sequence SDPA on CPU); te = Transformer Engine's fused cuDNN attention (CUDA in bf16/fp16, TE
    # installed); auto = te where it runs on Hopper or later, else varlen (measured: backends/attention.py)
    attn_implementation: str = "auto"
    logits_chunk_tokens: int = 2048  # tokens per chunk of the chunked cross-entropy
    # Keep the output layer's logits for the backward instead of recomputing them chunk by chunk: a quarter
    # of that layer's FLOPs saved for T x V values per micro-batch (bf16: 5 GB at 16K tokens x 152K
    # vocabulary; docs/performance.md measures it)
    keep_logits: bool = False
    # megatron backend only
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    transformer_impl: str = "auto"  # auto | transformer_engine | local
    fp8: str | None = None  # null | hybrid | e4m3
    fp8_recipe: str = "delayed"  # delayed | tensorwise | blockwise
    # Transformer Engine's spec: each weight-gradient GEMM adds into the fp32 gradient buffer itself
    # (megatron's gradient_accumulation_fusion), instead of a bf16 gradient that DDP adds in after it.
    # None: on wherever TE's spec runs (measured, one H200, 2026-12-04: 1.02x at the 7B slice, the
    # gradients equal HF's; docs/performance.md "Weight gradients accumulated inside the GEMM"); True
    # needs TE's spec; False: off
    gradient_accumulation_fusion: bool | None = None

    def __post_init__(self):
        check_values("model", self, logits_chunk_tokens=AT_LEAST_1, tensor_model_parallel_size=AT_LEAST_1,
                     pipeline_model_parallel_size=AT_LEAST_1, virtual_pipeline_model_parallel_size=AT_LEAST_1,
                     context_parallel_size=AT_LEAST_1, max_position_embeddings=AT_LEAST_1, rope_theta=POSITIVE)


@dataclass
class SFTModelConfig(ModelConfig):
    # A Hugging Face directory, or "tiny" for the project's own tiny Qwen2 (built, never downloaded).
    name_or_path: str = "tiny"
    tokenizer: str | None = None  # defaults to name_or_path


@dataclass
class SyntheticDataConfig:
    num_train: int = 6000
    seed: int = 0  # of the train split (the held-out problems are eval.seed's test split)

    def __post_init__(self):
        check_values("data.synthetic", self, num_train=AT_LEAST_1)


@dataclass
class DataConfig:
    # Packed Parquet shards from data_prep/pack.py; null = build the synthetic task's shards in the run dir.
    train_dir: str | None = None
    bin_size: int = 1024  # tokens per packed bin
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def __post_init__(self):
        check_values("data", self, bin_size=AT_LEAST_1)


@dataclass
class OptimConfig:
    """AdamW's hyperparameters, for SFT and RL alike (the learning rate is each run's own)."""

    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self):
        check_values("optim", self, weight_decay=NON_NEGATIVE, beta1=BETA, beta2=BETA, eps=POSITIVE)


@dataclass
class SFTOptimConfig(OptimConfig):
    """SFT's optimizer: AdamW plus the run's schedule (linear warmup, cosine from lr to min_lr)."""

    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20

    def __post_init__(self):
        super().__post_init__()
        check_values("optim", self, lr=POSITIVE, min_lr=NON_NEGATIVE, warmup_steps=AT_LEAST_0)


@dataclass
class CheckpointConfig:
    dir: str | None = None  # defaults to <output_dir>/checkpoints
    save_every: int = 100  # optimizer steps; 0 = only at the end
    keep_last: int = 2
    resume: ResumeMode = ResumeMode.auto

    def __post_init__(self):
        check_values("checkpoint", self, save_every=AT_LEAST_0, keep_last=AT_LEAST_1)


@dataclass
class SFTCheckpointConfig(CheckpointConfig):
    export_hf: bool = True  # write <output_dir>/hf at the end


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    plot: bool = True


@dataclass
class SFTLoggingConfig(LoggingConfig):
    log_every: int = 10
    progress_bar: bool = True

    def __post_init__(self):
        check_values("logging", self, log_every=AT_LEAST_1)


@dataclass
class HeldoutConfig:
    """Held-out accuracy during training (after SFT; before RL and after each RL stage), a quick check
    through the evaluation runner (nemo_ext/evaluation/heldout.py); benchmarks: eval/run_benchmarks.sh."""

    num_problems: int = 200  # the first N problems; 0 = skip
    file: str | None = None  # JSONL of {question, answer} (math); null = the synthetic task's test split
    seed: int = 0  # of the synthetic test split
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 512

    def __post_init__(self):
        check_values("eval", self, num_problems=AT_LEAST_0, max_new_tokens=AT_LEAST_1)


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    backend: BackendName = BackendName.torch
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    checkpoint: SFTCheckpointConfig = field(default_factory=SFTCheckpointConfig)
    logging: SFTLoggingConfig = field(default_factory=SFTLoggingConfig)
    eval: HeldoutConfig = field(default_factory=HeldoutConfig)
