"""Typed schema of the RL recipe YAML (``recipes/conf/rl``): GRPO with a list of stages.

One run walks ``stages`` in order (the paper's math 8K -> 16K -> 24K, code 24K -> 32K, math 32K);
each stage has its own data, response length, group size, temperature rule, overlong filtering,
prompt filter, learning rate and length. The sections shared with SFT (trainer, model, optim,
checkpoint, logging) hold only what both runs read (``config/schema.py``); SFT's own keys in an RL
config (``trainer.global_batch_size``, ``optim.lr``, ``model.name_or_path`` ...) are refused by
``as_rl_config`` with the RL key that does their job (``REFUSED_KEYS``). Every default here is the
embedded CPU demo's; the paper's values live in ``recipes/conf/rl/acereason_7b.yaml`` with their
sources. ``validate_rl_config`` checks what types cannot (ranges, one length per stage), naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import DictConfig, OmegaConf

from nemo_ext.config.load import as_schema, with_refused_keys
from nemo_ext.config.schema import (
    AT_LEAST_0,
    BackendName,
    CheckpointConfig,
    HeldoutConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
    check_values,
)


class Task(StrEnum):
    math = "math"
    code = "code"


class AdvantageEstimator(StrEnum):
    grpo = "grpo"  # (r - mean) / (std + eps): the paper's
    dr_grpo = "dr_grpo"  # r - mean
    rloo = "rloo"  # r minus the mean of the other responses


class Aggregation(StrEnum):
    token_mean = "token_mean"  # sum over every token of the global batch / its token count: the paper's
    seq_mean = "seq_mean"  # mean over sequences of each sequence's token mean (original GRPO)
    constant = "constant"  # sum / (sequences * max_response_len) (Dr. GRPO)


class TemperatureMode(StrEnum):
    fixed = "fixed"  # `value` for the whole stage
    probe = "probe"  # at stage start, the candidate whose entropy is nearest the target
    adaptive = "adaptive"  # start at `value`, then a bounded correction after every step


class PromptFilterMode(StrEnum):
    none = "none"
    solved_by_all = "solved_by_all"  # drop prompts every rollout solved
    pass_rate = "pass_rate"  # drop prompts whose pass rate exceeds max_pass_rate


@dataclass
class AdvantageConfig:
    estimator: AdvantageEstimator = AdvantageEstimator.grpo
    eps: float = 1e-6


@dataclass
class LossConfig:
    aggregation: Aggregation = Aggregation.token_mean
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    dual_clip: float | None = None  # c > 1: for negative advantages the loss is capped at -A * c
    tis_cap: float | None = None  # truncated importance sampling: weight min(pi_old / pi_vllm, cap)


@dataclass
class TemperatureConfig:
    mode: TemperatureMode = TemperatureMode.fixed
    value: float = 1.0  # fixed: the temperature; adaptive: the starting one
    target_entropy: float = 0.3  # nats per token of the temperature-scaled distribution
    probe_values: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    probe_prompts: int = 8  # prompts (each with group_size rollouts) per probe temperature
    gain: float = 0.5  # adaptive: temperature change per nat of entropy error
    max_step: float = 0.05  # adaptive: largest change per step
    min: float = 0.3
    max: float = 1.5


@dataclass
class OverlongConfig:
    filter: bool = True  # truncated responses get zero loss weight (they still count in the baseline)
    soft_punishment_len: int = 0  # DAPO's L_cache: >0 adds a length penalty in the last tokens; 0 = off


@dataclass
class PromptFilterConfig:
    mode: PromptFilterMode = PromptFilterMode.none
    max_pass_rate: float = 0.375  # pass_rate mode (the paper: 6/16)


@dataclass
class DynamicSamplingConfig:
    enabled: bool = False  # drop groups whose rewards are all equal and draw more prompts
    max_rounds: int = 2  # extra draws per step before training on what there is


@dataclass
class UntilConfig:
    metric: str = "reward/mean"  # a name logged every step (see docs/rl.md)
    above: float = 1.0  # the stage ends once the moving average reaches this
    window: int = 5  # steps in the moving average


@dataclass
class StageConfig:
    name: str = "stage"
    task: Task = Task.math
    data: str | None = None  # JSONL of {id, question, answer | tests}; null = the synthetic task
    num_prompts: int | None = None  # use the first N prompts of `data`; null = all
    max_response_len: int = 256  # tokens
    group_size: int = 8  # rollouts per prompt
    prompts_per_step: int = 16
    lr: float = 1e-6
    warmup_steps: int = 0
    # Length: the stage ends at the first of `steps`, `epochs` and `until` that is reached; at least
    # one of steps and epochs must be set, so `until` always has a bound.
    steps: int | None = None
    epochs: int | None = None
    until: UntilConfig | None = None
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    prompt_filter: PromptFilterConfig = field(default_factory=PromptFilterConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)


@dataclass
class PolicyConfig:
    # The starting weights: a Hugging Face directory (the SFT export), or "tiny" for a fresh tiny Qwen2.
    init: str = "tiny"
    micro_batch_tokens: int = 2048  # token budget of one packed micro-batch (update and log-prob passes)


KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # vLLM's names of the ones it stores


@dataclass
class RolloutConfig:
    # 1 only: the trainer's log-prob pass applies no top-p truncation (see validate_rl_config).
    top_p: float = 1.0
    # vLLM's weights and compute: auto = float32 on CPU (as the trainer there), the model's dtype on GPU.
    dtype: str = "auto"
    max_model_len: int | None = None  # null = the longest prompt + the largest stage max_response_len
    gpu_memory_utilization: float = 0.4  # GPU share of vLLM's weights and KV cache (colocated)
    # vLLM's KV cache: auto = the model's dtype; fp8 (E4M3 on CUDA, fp8_e5m2 also taken) stores half the
    # bytes a token: twice the responses in flight and half the bytes each decode step reads, which bound
    # generation at 16K-32K responses (docs/performance.md, "8 x 8 at 32K"). vLLM then samples from a
    # policy slightly off the trainer's (mismatch/kl measures it; loss.tis_cap corrects for it).
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    sleep_mode: bool = True  # GPU: offload vLLM's weights and drop its KV cache during the update
    # GPU: true skips vLLM's torch.compile and CUDA-graph capture at start (about 35 s for the 1.5B
    # shape on an H200, docs/performance.md) for slower decoding: short runs and debugging. CPU: always eager.
    enforce_eager: bool = False
    reward_workers: int = 2


@dataclass
class RLTrainerConfig(TrainerConfig):
    """RL's trainer: the shared keys plus the loop's garbage collection."""

    # Steps between Python garbage collections (off inside the steps, what exists at a stage's start
    # frozen: nemo_ext/garbage_collection.py); 0 = Python's collector. 1 (ours): a step is minutes
    # long, and with the collector on, the in-process vLLM engine's generation alone tripped 16-24 full
    # collections, 11-16 s of a 64 x 8 x 8K step of the 1.5B shape on an H200 (docs/performance.md).
    gc_interval: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_values("trainer", self, gc_interval=AT_LEAST_0)


@dataclass
class RLConfig:
    output_dir: str = "runs/rl"
    # torch (HF model, FSDP2 over the ranks) or megatron (model.tensor_model_parallel_size etc.; the
    # ranks of one model replica train the same micro-batches, every rank rolls out with its own vLLM).
    backend: BackendName = BackendName.torch
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    trainer: RLTrainerConfig = field(default_factory=RLTrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # AdamW betas, eps and weight decay; the learning rate is each stage's `lr`, constant after warmup.
    optim: OptimConfig = field(default_factory=OptimConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(steps=10)])
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: HeldoutConfig = field(default_factory=HeldoutConfig)  # before RL and after each stage


def _check(ok: bool, key: str, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"RL config key {key}: expected {expected}, got {value!r}")


def validate_stage(stage: StageConfig, key: str) -> None:
    """Range checks for one stage; ``key`` is its path in the config (``stages[2]``)."""
    _check(stage.max_response_len >= 1, f"{key}.max_response_len", "an integer >= 1", stage.max_response_len)
    _check(stage.group_size >= 2, f"{key}.group_size", "an integer >= 2 (a group needs a baseline)",
           stage.group_size)
    _check(stage.prompts_per_step >= 1, f"{key}.prompts_per_step", "an integer >= 1", stage.prompts_per_step)
    _check(stage.lr > 0, f"{key}.lr", "a learning rate > 0", stage.lr)
    _check(stage.steps is not None or stage.epochs is not None, f"{key}.steps/epochs",
           "at least one of them set (`until` alone has no bound)", None)
    for name in ("steps", "epochs"):
        value = getattr(stage, name)
        _check(value is None or value >= 1, f"{key}.{name}", "null or an integer >= 1", value)
    if stage.until is not None:
        _check(stage.until.window >= 1, f"{key}.until.window", "an integer >= 1", stage.until.window)
    t = stage.temperature
    _check(0 < t.min <= t.value <= t.max, f"{key}.temperature.value", f"within [min={t.min}, max={t.max}]",
           t.value)
    _check(t.max_step > 0 and t.gain >= 0, f"{key}.temperature.max_step/gain", "max_step > 0 and gain >= 0",
           (t.max_step, t.gain))
    if t.mode is TemperatureMode.probe:
        _check(bool(t.probe_values) and all(v > 0 for v in t.probe_values), f"{key}.temperature.probe_values",
               "a non-empty list of temperatures > 0", t.probe_values)
        _check(t.probe_prompts >= 1, f"{key}.temperature.probe_prompts", "an integer >= 1", t.probe_prompts)
    cache = stage.overlong.soft_punishment_len
    _check(0 <= cache <= stage.max_response_len, f"{key}.overlong.soft_punishment_len",
           f"0 (off) or at most max_response_len={stage.max_response_len}", cache)
    rate = stage.prompt_filter.max_pass_rate
    _check(0 <= rate <= 1, f"{key}.prompt_filter.max_pass_rate", "a pass rate in [0, 1]", rate)
    _check(stage.dynamic_sampling.max_rounds >= 0, f"{key}.dynamic_sampling.max_rounds", "an integer >= 0",
           stage.dynamic_sampling.max_rounds)


def validate_rl_config(cfg: RLConfig) -> RLConfig:
    """Checks beyond types; raises ValueError naming the key. Returns ``cfg``."""
    _check(len(cfg.stages) >= 1, "stages", "a non-empty list", cfg.stages)
    names = [s.name for s in cfg.stages]
    _check(len(set(names)) == len(names), "stages[*].name", "unique names (each names a checkpoint dir)",
           names)
    for i, stage in enumerate(cfg.stages):
        validate_stage(stage, f"stages[{i}]")
    loss = cfg.loss
    _check(0 <= loss.clip_low < 1 and loss.clip_high >= 0, "loss.clip_low/clip_high",
           "0 <= clip_low < 1 and clip_high >= 0", (loss.clip_low, loss.clip_high))
    _check(loss.dual_clip is None or loss.dual_clip > 1, "loss.dual_clip", "null or a value > 1",
           loss.dual_clip)
    _check(loss.tis_cap is None or loss.tis_cap > 0, "loss.tis_cap", "null or a value > 0", loss.tis_cap)
    _check(cfg.policy.micro_batch_tokens >= 1, "policy.micro_batch_tokens", "an integer >= 1",
           cfg.policy.micro_batch_tokens)
    _check(cfg.rollout.kv_cache_dtype in KV_CACHE_DTYPES, "rollout.kv_cache_dtype", f"one of {list(KV_CACHE_DTYPES)}",
           cfg.rollout.kv_cache_dtype)
    _check(cfg.rollout.top_p == 1, "rollout.top_p", "1.0: the trainer's log-probs (the old log-probs of the "
           "importance ratio, the entropy, the vLLM mismatch metric) are those of softmax(logits / T) without "
           "top-p truncation, so with top_p < 1 the ratio and the mismatch would compare different "
           "distributions; the paper trains at top_p = 1", cfg.rollout.top_p)
    return cfg



_EACH_STAGE = "stages[i].{} (each stage has its own)"
REFUSED_KEYS = {
    # SFT keys, which RL does not read: the RL key that does their job
    "trainer.max_steps": _EACH_STAGE.format("steps"),
    "trainer.epochs": _EACH_STAGE.format("epochs"),
    "trainer.global_batch_size": "stages[i].prompts_per_step x stages[i].group_size (a step's rollouts)",
    "trainer.micro_batch_size": "policy.micro_batch_tokens (a micro-batch is a token budget)",
    "model.name_or_path": "policy.init (the starting weights)",
    "model.tokenizer": "nothing: the trainer and vLLM both use policy.init's own tokenizer",
    "optim.lr": _EACH_STAGE.format("lr"),
    "optim.min_lr": "stages[i].lr (an RL stage's learning rate is constant after its warmup)",
    "optim.warmup_steps": _EACH_STAGE.format("warmup_steps"),
    "checkpoint.export_hf": "nothing: RL always writes stages/<stage>/hf and <output_dir>/hf",
    "logging.log_every": "nothing: RL logs every step",
    "logging.progress_bar": "nothing: RL prints one line per step",
    "data": "stages[i].data (each stage's prompt file)",
    # keys RL had and no longer has
    "loss.kl_coef": "nothing: the loop loads no reference policy (the paper uses no KL; PAPER.md \"KL, "
                    "entropy bonus\"); the loss's KL term (rl.losses.KLPenalty) is for callers that supply "
                    "ref_logprobs",
    "loss.kl_estimator": "nothing: see loss.kl_coef",
    "loss.kl_clamp": "nothing: see loss.kl_coef",
}
"""Keys an RL config may carry by habit (SFT's, or retired ones), each refused with what to use."""

RL_HYDRA_SCHEMA = with_refused_keys(RLConfig, REFUSED_KEYS)
"""What Hydra composes RL YAML onto (``rl_schema``): ``RLConfig`` plus ``REFUSED_KEYS`` as optional
fields, so a config that sets one reaches ``as_rl_config``, whose message says what to use (Hydra's
own would only say the key is unknown). Any other unknown key still fails in Hydra, naming it."""


def as_rl_config(composed: DictConfig) -> RLConfig:
    """The composed RL config as a checked ``RLConfig``: a refused key is an error naming the RL key
    to use, then every value is type-checked and ``validate_rl_config`` checks ranges."""
    for key, use in REFUSED_KEYS.items():
        if OmegaConf.select(composed, key, default=None) is not None:
            raise ValueError(f"RL config key {key}: RL has no such key (it would be ignored); use {use}")
    return validate_rl_config(as_schema(composed, RLConfig, drop=REFUSED_KEYS))
