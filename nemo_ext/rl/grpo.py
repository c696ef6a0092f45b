"""The GRPO loop of AceReason-Nemotron: one run walks the whole stage list.

Each step is a sequence of named, timed phases (arXiv 2505.16400 sec. 3; ../shared/PAPER.md RL rows):

    sample (the next prompts) -> generate (vLLM: n = group size, the stage's temperature and length
    limit; the reward pool scores each response as soon as it is generated) -> score (what is left)
    -> gather (the ranks' scored groups) -> filter (dynamic sampling: back to sample while short)
    -> advantages (the step's ExperienceBatch) -> sleep (vLLM frees the GPU) -> logprobs (the
    trainer's no-grad pass, in chunks, over the micro-batches that are not trained: entropy, vLLM
    mismatch) -> train (one on-policy update, packed micro-batches; its forward measures the trained
    ones' entropy and mismatch) -> sync (new weights into vLLM) -> wake (vLLM's KV cache) -> log

Strictly on-policy: one optimizer step per rollout batch (so the old log-probs are the current ones,
detached, and need no pass of their own), no KL, no entropy bonus. Each stage starts from the
previous stage's weights with a fresh optimizer at its own learning rate, writes its Hugging Face
export under ``stages/<name>/hf`` and its curves under ``logs/<name>``; checkpoints hold the schedule
state, so a killed run resumes mid-stage where it stopped.

Several processes (``trainer.devices`` > 1): each rank rolls out and scores its share of the prompts,
and each data-parallel replica of the trainer (a rank with the torch backend; the TP x PP x CP ranks
of one model with megatron) trains its share of the micro-batches; every rank holds every scored
group, so all take the same decisions (data_parallel.py). Rank 0 writes logs, evaluations and exports.

Left out: asynchronous (off-policy) rollouts and a reference policy for the optional KL term.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from nemo_ext import dist
from nemo_ext.config.rl import RLConfig, StageConfig, validate_rl_config
from nemo_ext.evaluation.heldout import evaluate_heldout
from nemo_ext.garbage_collection import collect_between_steps
from nemo_ext.observe import MetricsLogger, plot_curves
from nemo_ext.output_lock import OutputLock
from nemo_ext.rl.advantages import uniform_groups
from nemo_ext.rl.data_parallel import RankShare
from nemo_ext.rl.experience import Group, build_experience, logprob_pass_stats, step_tensors
from nemo_ext.rl.filters import DynamicSampling, soft_overlong_penalty
from nemo_ext.rl.logprob_stats import LogprobStats, split_measured
from nemo_ext.rl.losses import PolicyLoss
from nemo_ext.rl.prompts import RLPrompt, load_stage_prompts
from nemo_ext.rl.run_state import read_eval, write_eval
from nemo_ext.rl.setup import PolicyUpdate, RLRun, Rollouts, build_run, close_run
from nemo_ext.rl.stages import StageSchedule, epoch_order, stage_lr_schedule
from nemo_ext.rl.temperature import TemperatureController

PLOT_KEYS = ("reward/mean", "response_length/mean", "truncated_frac", "entropy", "temperature", "mismatch/kl")


class PhaseTimer:
    """Wall-clock seconds per named phase, summed over the step."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def rollout_groups(rollouts: Rollouts, stage: StageConfig, prompts: list[RLPrompt], temperature: float, seed: int,
                   timer: PhaseTimer) -> list[Group]:
    """The generate, score and gather phases: ``group_size`` responses per prompt, scored (rewards
    include DAPO's length penalty when the stage asks for it). Each rank rolls out its share, and its
    reward pool scores every response as soon as it is generated: ``time/generate`` covers both,
    ``time/score`` the scoring left after the last response. All ranks get every group, in order."""
    mine, G = rollouts.share.indices(len(prompts)), stage.group_size
    completions = [[None] * G for _ in mine]
    scored_at: dict[tuple[int, int], int] = {}  # (prompt k of mine, response j) -> position in the session
    with rollouts.reward_pool.session(stage.task.value) as session:
        with timer("generate"):
            for k, j, completion in rollouts.engine.stream([prompts[i].text for i in mine], n=G,
                                                           temperature=temperature, max_tokens=stage.max_response_len,
                                                           seed=seed, positions=mine):
                completions[k][j] = completion
                scored_at[k, j] = session.add(completion.text, prompts[mine[k]].reference)
                session.poll()
        with timer("score"):
            verdicts = session.results()
    groups = []
    for k, (i, cs) in enumerate(zip(mine, completions, strict=True)):
        vs = [verdicts[scored_at[k, j]] for j in range(G)]
        rewards = torch.tensor([v.reward for v in vs], dtype=torch.float32)
        if stage.overlong.soft_punishment_len > 0:
            lengths = torch.tensor([len(c.token_ids) for c in cs])
            rewards = rewards + soft_overlong_penalty(lengths, stage.max_response_len,
                                                      stage.overlong.soft_punishment_len)
        groups.append(Group(prompts[i], rollouts.tokens(prompts[i]), cs, rewards.tolist(),
                            [v.verdict == "accepted" for v in vs]))
    with timer("gather"):
        return rollouts.share.gather(groups, len(prompts))


def measure_logprobs(update: PolicyUpdate, mine: list, temperature: float) -> LogprobStats:
    """The statistics of the trainer's no-grad log-prob pass over this replica's micro-batches, merged
    over the replicas. No pass, and no exchange, without micro-batches: ``split_micro_batches`` gives
    every replica the same number, so then all of them have none."""
    if not mine:
        return LogprobStats()
    stats = logprob_pass_stats(mine, update.backend.logprobs(mine, temperature))
    return LogprobStats.merge(update.share.replica_gather(stats))


def step_seed(base: int, global_step: int, draw: int) -> int:
    return random.Random(f"{base}-{global_step}-{draw}").getrandbits(31)


def rollout_metrics(drawn: Sequence[Group]) -> dict[str, float]:
    """Statistics of every rollout the step drew (dynamic sampling's dropped groups included)."""
    t = step_tensors(drawn)
    return {
        "reward/mean": float(t.rewards.mean()), "pass_rate": float(t.passed.float().mean()),
        "response_length/mean": float(t.lengths.float().mean()), "response_length/max": int(t.lengths.max()),
        "truncated_frac": float(t.truncated.float().mean()),
        "groups/uniform": int(uniform_groups(t.rewards).sum()),
        "generated_tokens": float(t.lengths.sum()),
    }


def draw_groups(run: RLRun, stage: StageConfig, prompts: dict[str, RLPrompt], temperature: float,
                timer: PhaseTimer) -> tuple[list[Group], list[Group], dict[str, float]]:
    """The sample, generate (score, gather) and filter phases, repeated while dynamic sampling asks for
    more prompts. Returns the groups to train on, every group drawn, and dynamic sampling's metrics."""
    sched, ds = run.schedule, stage.dynamic_sampling
    sampling = DynamicSampling(stage.prompts_per_step, ds.max_rounds, lambda g: g.rewards, enabled=ds.enabled)
    drawn: list[Group] = []
    while (k := sampling.request()) > 0:
        with timer("sample"):
            ids = sched.take(k)
        groups = []
        if ids:
            seed = step_seed(sched.seed, sched.state.global_step, len(drawn))
            groups = rollout_groups(run.rollouts, stage, [prompts[i] for i in ids], temperature, seed, timer)
            sched.record_pass_rates(ids, torch.tensor([g.passed for g in groups]))
            drawn.extend(groups)
        with timer("filter"):
            sampling.add(groups)
    r = sampling.report
    metrics = {"dynamic_sampling/drawn": r.drawn, "dynamic_sampling/dropped": r.dropped,
               "dynamic_sampling/rounds": r.rounds, "dynamic_sampling/short": r.short} if ds.enabled else {}
    return sampling.kept, drawn, metrics


def grpo_step(run: RLRun, stage: StageConfig, prompts: dict[str, RLPrompt], temperature: float) -> dict | None:
    """One GRPO step; returns its metrics (docs/rl.md names them all), or None if the stage had no
    prompts left to draw (its end)."""
    timer, step_start = PhaseTimer(), time.perf_counter()
    groups, drawn, metrics = draw_groups(run, stage, prompts, temperature, timer)
    if not drawn:
        return None
    metrics.update(temperature=temperature, **rollout_metrics(drawn))
    metrics["groups/trained"] = len(groups)
    if groups:
        metrics.update(update_policy(run.update, stage, groups, temperature, timer))
    else:  # dynamic sampling found no group with unequal rewards
        metrics["update/skipped"] = 1.0
    step_seconds = time.perf_counter() - step_start
    metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
    metrics["time/step"] = step_seconds
    tokens = metrics.pop("generated_tokens")
    metrics["throughput/tokens_per_s"] = tokens / step_seconds
    metrics["throughput/generate_tokens_per_s"] = tokens / max(timer.seconds["generate"], 1e-9)
    return metrics


def update_policy(update: PolicyUpdate, stage: StageConfig, groups: list[Group], temperature: float,
                  timer: PhaseTimer) -> dict[str, float]:
    """The advantages, sleep, logprobs, train, sync and wake phases: the step's ``ExperienceBatch`` ->
    the untrained micro-batches' statistics (no-grad pass) -> one optimizer step on the trained ones,
    whose forward measures theirs -> weights into vLLM, its KV cache back. ``entropy`` and
    ``mismatch/*`` are over every response token, trained or not."""
    share = update.share
    with timer("advantages"):
        batch = build_experience(groups, update.advantage, stage.overlong.filter, update.micro_batch_tokens,
                                 stage.max_response_len)
        my_trained, my_untrained = share.split_micro_batches(batch.trained), share.split_micro_batches(batch.untrained)
    with timer("sleep"):  # GPU: the trainer's passes get the memory of vLLM's weights and KV cache
        update.engine.sleep()
    with timer("logprobs"):  # the untrained micro-batches only (every one when the update is skipped)
        untrained = measure_logprobs(update, my_untrained, temperature)
    norm = batch.normalizer
    metrics = {"loss_tokens": norm.tokens, "update/trained_tokens": norm.metric_tokens}
    trained = LogprobStats()
    if batch.trained:
        with timer("train"):
            out = update.backend.train_step(my_trained, PolicyLoss(update.loss, norm), temperature,
                                            with_entropy=True)
        trained, out = split_measured(out)
        metrics.update({f"update/{k}": v for k, v in out.items()})
    else:  # nothing to learn from: equal rewards everywhere, or every response filtered
        metrics["update/skipped"] = 1.0
    metrics.update(LogprobStats.merge([untrained, trained]).metrics())
    with timer("sync"):  # wakes vLLM's weights, even after a skipped update
        update.engine.load_weights(update.backend.hf_weights())
    with timer("wake"):  # and its KV cache
        update.engine.wake()
    return metrics


def probe_temperature(run: RLRun, stage: StageConfig, prompts: dict[str, RLPrompt],
                      controller: TemperatureController) -> dict[str, float]:
    """The ``probe`` mode: entropy of a fixed probe batch at each candidate temperature; adopts the
    one nearest the target. Returns ``probe/entropy@T`` metrics. Every temperature's rollouts are
    one batch: the probe then waits for its longest response once, not once per temperature (with
    six temperatures at a 32K stage, that is most of a stage start's time)."""
    tc, sched = stage.temperature, run.schedule
    ids = epoch_order(sched.state.active, sched.seed, sched.state.stage, 0)[:tc.probe_prompts]
    batch, measured = [prompts[i] for i in ids], {}
    rollouts, update = run.rollouts, run.update
    mine, candidates = rollouts.share.indices(len(batch)), tc.probe_values
    # this rank's prompts once per candidate; the same seeds at every temperature (the positions')
    completions = rollouts.engine.sample([batch[i].text for _ in candidates for i in mine], n=stage.group_size,
                                         temperature=[t for t in candidates for _ in mine],
                                         max_tokens=stage.max_response_len, seed=step_seed(sched.seed, -1, 0),
                                         positions=[i for _ in candidates for i in mine])
    for k, temperature in enumerate(candidates):
        at_t = completions[k * len(mine):(k + 1) * len(mine)]
        groups = run.share.gather([Group(batch[i], rollouts.tokens(batch[i]), cs, [0.0] * len(cs), [False] * len(cs))
                                   for i, cs in zip(mine, at_t, strict=True)], len(batch))
        experience = build_experience(groups, update.advantage, False, update.micro_batch_tokens,
                                      stage.max_response_len)  # zero rewards: every micro-batch untrained
        stats = measure_logprobs(update, update.share.split_micro_batches(experience.untrained), temperature)
        measured[temperature] = stats.metrics()["entropy"]
    controller.set_probe(measured)
    return {f"probe/entropy@{t:g}": e for t, e in measured.items()}


def run_stage(run: RLRun, stop_at: int | None = None) -> dict | None:
    """Train the schedule's current stage to its end and return its summary, or return None once the
    run reaches global step ``stop_at``."""
    sched, stage = run.schedule, run.schedule.stage
    prompts = load_stage_prompts(stage, sched.seed)
    fresh = sched.state.active is None
    sched.begin_stage(list(prompts))
    if fresh:
        run.backend.reset_optimizer(stage_lr_schedule(stage))
    controller = TemperatureController.start(stage.temperature)
    if sched.state.temperature is not None:
        controller.load_state_dict(sched.state.temperature)
    # Steps past the global step logged by a killed run are logged again: resume_step drops them.
    logger = MetricsLogger(run.out / "logs" / stage.name, tensorboard=run.logging.tensorboard,
                           enabled=run.share.is_main, resume_step=sched.state.global_step)
    with collect_between_steps(run.gc_interval) as collector:
        if controller.needs_probe:
            logger.log(sched.state.global_step, probe_temperature(run, stage, prompts, controller))
            sched.state.temperature = controller.state_dict()
        while (reason := sched.done_reason()) is None:
            if stop_at is not None and sched.state.global_step >= stop_at:
                logger.close()
                return None
            metrics = grpo_step(run, stage, prompts, controller.temperature)
            if metrics is None:  # no prompts left: done_reason() now says why
                continue
            if "entropy" in metrics:
                controller.observe(metrics["entropy"])
            sched.state.temperature = controller.state_dict()
            metrics.update({"stage": sched.state.stage, "epoch": sched.state.epoch,
                            "prompts/dropped": sched.state.dropped, "prompts/active": len(sched.state.active)})
            sched.end_step(metrics)
            logger.log(sched.state.global_step, metrics)
            if run.share.is_main:
                print(format_step(sched, metrics), flush=True)
            if run.checkpoints.due():
                run.checkpoints.save()
            collector.after_step(sched.state.global_step)
    logger.close()
    return {"stage": stage.name, "end": reason, "steps": sched.state.step, "dropped": sched.state.dropped}


def format_step(sched: StageSchedule, m: dict) -> str:
    """One console line per step."""
    keys = ("reward/mean", "pass_rate", "response_length/mean", "truncated_frac", "entropy", "temperature",
            "mismatch/kl", "time/step")
    shown = " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
    return f"[rl] {sched.stage.name} step {sched.state.step} (global {sched.state.global_step}) {shown}"


def evaluate(run: RLRun, name: str, checkpoint: Path) -> None:
    """Record held-out accuracy under ``name`` in eval.json (once: skipped if already there), on the
    rollout engine, which holds the weights exported to ``checkpoint``. Rank 0 evaluates (the
    evaluation runner, nemo_ext/evaluation/heldout.py); the other ranks wait at their next exchange."""
    results = shared_eval(run)
    if name in results or run.heldout.num_problems <= 0 or not run.share.is_main:
        return
    rollouts = run.rollouts
    with collect_between_steps(run.gc_interval):  # its generation, like a step's, without the collector's stalls
        results[name] = evaluate_heldout(run.heldout, checkpoint, run.out / "heldout", name, rollouts.reward_pool,
                                         llm=rollouts.engine.llm)
    print(f"[rl] held-out accuracy after {name}: {results[name]['accuracy']:.3f}", flush=True)
    write_eval(run.out, results)


def shared_eval(run: RLRun) -> dict:
    """eval.json as rank 0 reads it (it is rank 0 that writes it), on every rank."""
    return run.share.all_gather(read_eval(run.out) if run.share.is_main else None)[0]


def finish_stage(run: RLRun, summary: dict) -> None:
    """Export the stage's weights, evaluate them, plot its curves, move to the next stage, checkpoint."""
    name, main = summary["stage"], run.share.is_main
    if main:
        print(f"[rl] stage {name} ended ({summary['end']}) after {summary['steps']} steps", flush=True)
    export = run.out / "stages" / name / "hf"
    run.backend.export_hf(export)
    evaluate(run, name, export)
    log_dir = run.out / "logs" / name
    if main and run.logging.plot and (log_dir / "metrics.jsonl").exists():
        plot_curves(log_dir / "metrics.jsonl", PLOT_KEYS, log_dir / "curves.png", title=f"RL stage {name}")
    run.schedule.next_stage()
    if main and run.schedule.finished:
        link_final_export(run.out, name)
    run.checkpoints.save()


def link_final_export(out: Path, stage: str) -> None:
    """``<out>/hf`` -> ``stages/<stage>/hf``: the run's final weights at a path that does not depend on
    the stage names (a relative symlink, replaced atomically)."""
    tmp = out / ".hf.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("stages") / stage / "hf", target_is_directory=True)
    os.replace(tmp, out / "hf")


def train(cfg: RLConfig, stop_at: int | None = None) -> dict:
    """Run (or resume) the whole RL schedule; returns the held-out accuracies before RL (``init``) and
    after each stage, also written to ``<output_dir>/eval.json``.

    stop_at: checkpoint and return once the run reaches this global step (a time-limited job); the
    next call resumes there.
    """
    _lock = OutputLock(cfg.output_dir, enabled=dist.is_main_process())  # held until train returns
    run = build_run(validate_rl_config(cfg))
    try:
        evaluate(run, "init", run.init)
        while not run.schedule.finished:
            summary = run_stage(run, stop_at)
            if summary is None:
                run.checkpoints.save()
                break
            finish_stage(run, summary)
        return shared_eval(run)
    finally:
        close_run(run)


def run_rl(cfg: RLConfig) -> None:
    """``train`` as one rank of ``dist.launch`` (the recipe's entry); rank 0 prints the accuracies."""
    results = train(cfg)
    if RankShare.current().is_main:
        for name, result in results.items():
            print(f"held-out accuracy {name}: {result['accuracy']:.1%}", flush=True)
