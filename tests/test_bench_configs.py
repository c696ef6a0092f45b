"""The GPU benches build their configs on the CPU as they will on the GPU machine: a bench that only
runs there must not first meet a renamed config key there (bench/fp8_convergence.py's worker did, on
2026-12-02, and a call's device time went with it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe", ["bf16", "tensorwise", "blockwise", "delayed"])
def test_fp8_convergence_configs(recipe):
    b = bench("fp8_convergence")
    args = b.parser().parse_args(["--steps", "300", "--lr", "3e-4", "--fp8", "hybrid"])
    args.recipe = recipe
    model, trainer, optim, schedule = b.configs(args)
    assert model.transformer_impl == "transformer_engine"
    assert (model.fp8, model.fp8_recipe) == ((None, "delayed") if recipe == "bf16" else ("hybrid", recipe))
    assert (schedule.lr, schedule.total_steps) == (3e-4, 300) and schedule.min_lr == pytest.approx(3e-5)
    assert optim.weight_decay == 0.0 and not trainer.fsdp


def test_sft_throughput_configs():
    b = bench("sft_throughput")
    args = b.parser().parse_args(["--shape", "7b", "--layers", "8", "--recompute", "full", "--attention", "te",
                                  "--logits-chunk", "8192"])
    model, trainer, _, schedule = b._configs(args, "unused")
    assert model.attn_implementation == "te" and trainer.activation_checkpointing
    assert model.logits_chunk_tokens == 8192 and not model.keep_logits
    assert schedule.total_steps == 100
    assert b.megatron_variant("megatron_te_keep") == {"impl": "transformer_engine", "compile_layers": False,
                                                      "keep_logits": True, "fp8": False}
    with pytest.raises(ValueError, match="megatron_kept"):
        b.megatron_variant("megatron_kept")


def test_rl_step_config():
    b = bench("rl_step")
    args = b.parser().parse_args(["--prompts", "16", "--max-len", "8192", "--steps", "2", "--micro-tokens", "32768",
                                  "--recompute", "--gpu-memory-utilization", "0.7", "--keep-logits"])
    args.model_dir = "/tmp/model"
    cfg = b.rl_config(args, "megatron")
    stage = cfg.stages[0]
    assert (stage.max_response_len, stage.group_size, stage.prompts_per_step) == (8192, 8, 16)
    assert stage.num_prompts == 16 * 3 and stage.steps == 3  # the warm-up step's prompts too
    assert cfg.policy.micro_batch_tokens == 32768 and cfg.trainer.activation_checkpointing
    assert cfg.model.keep_logits
    assert cfg.rollout.sleep_mode and cfg.rollout.max_model_len == 8192 + 256
    assert not stage.overlong.filter  # every response is truncated: the filter would drop them all


def test_fp8_convergence_reports_when_each_curve_crosses_each_loss():
    b = bench("fp8_convergence")
    losses = [2.0] * 5 + [0.6] * 5 + [0.15] * 10
    assert b.first_steps_below(losses, window=1) == {1.0: 6, 0.5: 11, 0.2: 11, 0.1: None}
    # smoothed over 2 steps: (2.0 + 0.6) / 2 = 1.3 at step 6, then 0.6, 0.375 (step 11), 0.15
    assert b.first_steps_below(losses, window=2) == {1.0: 7, 0.5: 11, 0.2: 12, 0.1: None}
    assert b.first_steps_below([0.05] * 3, window=20)[0.1] == 1

    base = {"recipe": "bf16", "seed": 0, "losses": [1.0] * 10, "tokens_per_s": 100.0}
    other_seed = {**base, "seed": 1, "losses": [1.1] * 10}
    fp8 = {"recipe": "tensorwise", "seed": 0, "losses": [0.9] * 10, "tokens_per_s": 80.0}
    lines = b.summary([base, other_seed, fp8], window=5, seed=0)
    assert "+10.00% loss" in lines[1] and "bf16 (seed 1)" in lines[1]
    assert "-10.00% loss and 0.80x the speed of bf16" in lines[2]
    assert "below 1 at step 1" in lines[2] and "below 1 at step -" in lines[0]


def test_fp8_convergence_spread_seed_runs_bf16_twice():
    b = bench("fp8_convergence")
    args = b.parser().parse_args(["--spread-seed", "1", "--fp8-recipe", "tensorwise,delayed"])
    assert b.planned_runs(args) == [("bf16", 0), ("bf16", 1), ("tensorwise", 0), ("delayed", 0)]
    assert b.planned_runs(b.parser().parse_args([])) == [("bf16", 0), ("tensorwise", 0)]


def test_experience_bench_baseline_builds_the_loops_micro_batches():
    """bench/experience.py times build_experience against the per-token lists it replaced: both must
    give the same micro-batches (token ids, positions, boundaries, masks, advantages, log-probs)."""
    from nemo_ext.config.rl import AdvantageConfig
    from nemo_ext.rl.experience import build_experience

    b = bench("experience")
    groups = b.synthetic_groups(prompts=3, group=4, max_len=40)
    batch = build_experience(groups, AdvantageConfig(), False, 400, 40)
    reference = b.per_token_lists(groups, 400)
    assert len(reference) == 6  # 12 sequences of 120 + 40 tokens, two to a 400-token micro-batch
    b.assert_same_micro_batches(batch.trained + batch.untrained, reference)
    groups[0].completions[1].logprobs[5] += 1.0  # one changed log-prob is seen
    with pytest.raises(AssertionError, match="rollout_logprobs"):
        b.assert_same_micro_batches(build_experience(groups, AdvantageConfig(), False, 400, 40).trained,
                                    reference)


def test_rl_step_workers_get_every_setting():
    """Each of bench/rl_step.py's settings reaches its worker processes (``--keep-logits`` once did
    not, and the step then ran without it)."""
    b = bench("rl_step")
    p = b.parser()
    given = p.parse_args(["--shape", "tiny", "--layers", "3", "--max-len", "64", "--prompts", "2", "--group", "4",
                          "--steps", "2", "--warmup-len", "16", "--micro-tokens", "512", "--gpu-memory-utilization",
                          "0.3", "--reward-workers", "1", "--no-compile", "--recompute", "--keep-logits",
                          "--accelerator", "cpu", "--backend", "torch,megatron", "--logs", "/tmp/logs"])
    seen = p.parse_args(b.worker_settings(given))
    settings = {k: v for k, v in vars(given).items() if k not in b.DRIVER_ONLY}
    assert {k: getattr(seen, k) for k in settings} == settings
    assert settings["keep_logits"] and settings["recompute"] and not settings["compile"]
    assert b.worker_settings(p.parse_args([])) == ["--shape", "1.5b", "--max-len", "8192", "--prompts", "64",
                                                  "--group", "8", "--steps", "1", "--warmup-len", "512",
                                                  "--micro-tokens", "16384", "--gpu-memory-utilization", "0.5",
                                                  "--reward-workers", "4", "--accelerator", "gpu"]


def test_rl_step_summary_gives_the_updates_mfu_and_the_not_generation_floor():
    b = bench("rl_step")
    warmup = {"step_s": 50.0, "tokens": 10, "generate_s": 5.0, "train_s": 40.0, "train_flop": 1e12}
    timed = {"step_s": 100.0, "tokens": 1_000_000, "generate_s": 60.0, "train_s": 30.0, "train_flop": 1.2e16}
    s = b.summarize("torch", {"steps": [warmup, timed], "engine_and_trainer_gib": 100.0},
                    {"tokens_per_s": 20_000.0, "engine_gib": 98.0}, peak_flops=1e15)
    assert s["train_mfu"] == pytest.approx(1.2e16 / 30.0 / 1e15)  # 40%
    assert s["not_generation_floor"] == pytest.approx(12.0 / (12.0 + 60.0), abs=1e-4)  # the update at peak: 12 s
    assert s["not_generation_share"] == pytest.approx(0.4)
    assert s["generate_vs_ceiling"] == pytest.approx(0.833, abs=1e-3)
    cpu = b.summarize("torch", {"steps": [warmup, timed], "engine_and_trainer_gib": 0.0},
                      {"tokens_per_s": 20_000.0, "engine_gib": 0.0}, peak_flops=None)
    assert "train_mfu" not in cpu and "not_generation_floor" not in cpu


def test_rl_step_plot_reads_the_benchs_summaries_and_names_a_bad_line(tmp_path):
    b = bench("plot_rl_step")
    rows = ROOT / "docs" / "data" / "rl_step_2026-12-03_16x8x8k.jsonl"
    summaries = b.read_summaries([str(rows)])
    assert [s["backend"] for s in summaries] == ["torch", "megatron"]
    png = b.plot(summaries, tmp_path / "steps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows.read_text().splitlines()[0] + "\n{\"backend\": \"torch\"}\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not a bench/rl_step.py summary"):
        b.read_summaries([str(bad)])
    bad.write_text("{oops\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: not JSON"):
        b.read_summaries([str(bad)])


def test_sft_throughput_workers_get_every_setting_but_the_per_run_ones():
    """bench/sft_throughput.py hands its workers every setting (``--logits-chunk`` once did not reach
    them); the FP8 ones and ``--recompute`` go per run (one recipe each, recompute last for the
    out-of-memory retry)."""
    b = bench("sft_throughput")
    p = b.parser()
    given = p.parse_args(["--shape", "7b", "--layers", "8", "--bin", "8192", "--max-len", "4096", "--micro", "8",
                          "--warmup", "1", "--steps", "3", "--tp", "2", "--gpus", "2", "--logits-chunk", "8192",
                          "--memory-budget", "0.3", "--no-optimizer", "--attention", "te", "--worker-logs", "/tmp/w",
                          "--gc-interval", "0", "--seed", "3", "--backend", "megatron_fp8", "--recompute", "full",
                          "--fp8-recipe", "delayed,tensorwise"])
    argv = b.worker_settings(given)
    seen = p.parse_args(argv)
    settings = {k: v for k, v in vars(given).items() if k not in b.DRIVER_ONLY}
    assert {k: getattr(seen, k) for k in settings} == settings
    assert settings["logits_chunk"] == 8192 and settings["no_optimizer"]
    assert "--fp8-recipe" not in argv and "--recompute" not in argv and "--backend" not in argv
