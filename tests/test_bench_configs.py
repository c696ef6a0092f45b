"""The GPU benches build their configs on the CPU as they will on the GPU machine: a bench that only
runs there must not first meet a renamed config key there (bench/fp8_convergence.py's worker did, on
2026-12-02, and a call's device time went with it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
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
                                                      "keep_logits": True, "fused_accumulation": None, "fp8": False}
    assert b.megatron_variant("megatron_keep_unfused")["fused_accumulation"] is False
    assert b.megatron_variant("megatron_keep_fused_fp8") == {"impl": "auto", "compile_layers": False,
                                                             "keep_logits": True, "fused_accumulation": True,
                                                             "fp8": True}
    for bad in ("megatron_kept", "megatron_fused_unfused"):
        with pytest.raises(ValueError, match=bad):
            b.megatron_variant(bad)


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


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_experience_bench_spinners_end_with_a_killed_bench():
    """bench/experience.py --busy: a bench killed outright (a timeout's signal; no ``finally`` runs)
    leaves no spinning process behind, and none of them keeps its output pipe open (a ``| tee`` after
    it would wait for ever, as on the GPU machine on 2026-12-04)."""
    child_code = (f"import importlib.util, sys, time\n"
                  f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'bench' / 'experience.py')!r})\n"
                  f"b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)\n"
                  f"print(*[p.pid for p in b.spinning(2)], flush=True)\n"
                  f"time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    spinners = [int(pid) for pid in child.stdout.readline().split()]
    assert len(spinners) == 2 and all(_alive(pid) for pid in spinners)
    child.kill()
    child.communicate(timeout=10)  # the pipe reaches EOF: no spinner holds it
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in spinners) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in spinners), "a spinner outlived the bench"


def test_rl_step_workers_get_every_setting():
    """Each of bench/rl_step.py's settings reaches its worker processes (``--keep-logits`` once did
    not, and the step then ran without it)."""
    b = bench("rl_step")
    p = b.parser()
    given = p.parse_args(["--shape", "tiny", "--layers", "3", "--max-len", "64", "--prompts", "2", "--group", "4",
                          "--steps", "2", "--warmup-len", "16", "--micro-tokens", "512", "--gpu-memory-utilization",
                          "0.3", "--reward-workers", "1", "--no-compile", "--recompute", "--keep-logits",
                          "--attention", "te", "--kv-cache-dtype", "fp8", "--accelerator", "cpu",
                          "--backend", "torch,megatron",
                          "--logs", "/tmp/logs"])
    seen = p.parse_args(b.worker_settings(given))
    settings = {k: v for k, v in vars(given).items() if k not in b.DRIVER_ONLY}
    assert {k: getattr(seen, k) for k in settings} == settings
    assert settings["keep_logits"] and settings["recompute"] and not settings["compile"]
    assert settings["attention"] == "te"
    assert b.worker_settings(p.parse_args([])) == ["--shape", "1.5b", "--max-len", "8192", "--prompts", "64",
                                                  "--group", "8", "--steps", "1", "--warmup-len", "512",
                                                  "--micro-tokens", "16384", "--gpu-memory-utilization", "0.5",
                                                  "--reward-workers", "4", "--attention", "auto",
                                                  "--kv-cache-dtype", "auto", "--accelerator", "gpu"]


def test_rl_step_runs_the_torch_backend_once_per_attention_and_kv_cache_dtype():
    """bench/rl_step.py --attention varlen,te: one torch step each (a same-run A/B), megatron once;
    --kv-cache-dtype auto,fp8: a ceiling and those steps for each; each worker gets its own settings,
    and a bad name stops the run before the ceiling."""
    b = bench("rl_step")
    p = b.parser()
    args = p.parse_args(["--backend", "torch,megatron", "--attention", "varlen,te"])
    assert b.planned_runs(args) == [("torch", "varlen", "auto"), ("torch", "te", "auto"),
                                    ("megatron", "varlen", "auto")]
    assert [b.run_label(run, args) for run in b.planned_runs(args)] == ["torch[varlen]", "torch[te]", "megatron"]
    for run in b.planned_runs(args):
        assert p.parse_args(b.worker_settings(args, run)).attention == run.attention
    assert p.parse_args(b.worker_settings(args)).attention == "varlen"  # the ceiling's
    one = p.parse_args(["--backend", "torch"])
    assert b.planned_runs(one) == [("torch", "auto", "auto")] and b.run_label(b.planned_runs(one)[0], one) == "torch"
    assert b.planned_runs(p.parse_args(["--backend", "none"])) == []

    kv = p.parse_args(["--backend", "torch", "--attention", "te", "--kv-cache-dtype", "auto,fp8"])
    runs = b.planned_runs(kv)
    assert runs == [("torch", "te", "auto"), ("torch", "te", "fp8")]
    assert [b.run_label(run, kv) for run in runs] == ["torch[kv auto]", "torch[kv fp8]"]
    assert b.run_label(b.Run(None, "te", "fp8"), kv) == "ceiling[kv fp8]" and b.run_label(runs[0], one) == "torch"
    assert [p.parse_args(b.worker_settings(kv, run)).kv_cache_dtype for run in runs] == ["auto", "fp8"]
    worker = p.parse_args(b.worker_settings(kv, runs[1]))
    worker.model_dir = "/tmp/model"
    assert b.rl_config(worker, "torch").rollout.kv_cache_dtype == "fp8"
    for bad, option in ((["--attention", "varlen,flash3"], "--attention 'varlen,flash3'"),
                        (["--kv-cache-dtype", "auto,int8"], "--kv-cache-dtype 'auto,int8'")):
        with pytest.raises(SystemExit, match=option):
            b.planned_runs(p.parse_args(bad))


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
    alone = b.summarize("torch", {"steps": [warmup, timed], "engine_and_trainer_gib": 100.0}, None, peak_flops=1e15)
    assert not {"ceiling_tokens_per_s", "generate_vs_ceiling", "engine_gib"} & alone.keys()  # --no-ceiling
    assert alone["generate_tokens_per_s"] == 16_667 and alone["not_generation_share"] == pytest.approx(0.4)


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


def test_sft_throughput_runs_every_fp8_recipe_and_every_attention_where_they_apply():
    b = bench("sft_throughput")
    args = b.parser().parse_args(["--backend", "megatron,torch_compile,megatron_keep_fp8", "--attention", "varlen,te",
                                  "--fp8-recipe", "delayed,tensorwise"])
    assert b.planned_runs(args) == [("megatron", None, None), ("torch_compile", None, "varlen"),
                                    ("torch_compile", None, "te"), ("megatron_keep_fp8", "delayed", None),
                                    ("megatron_keep_fp8", "tensorwise", None)]
    with pytest.raises(SystemExit, match="--attention 'varlen,flash'"):
        b.planned_runs(b.parser().parse_args(["--attention", "varlen,flash"]))


def test_sft_throughput_workers_get_every_setting_but_the_per_run_ones():
    """bench/sft_throughput.py hands its workers every setting (``--logits-chunk`` once did not reach
    them); the FP8 ones, the attention and ``--recompute`` go per run (one recipe or attention each,
    recompute last for the out-of-memory retry)."""
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
    assert "--attention" not in argv


@pytest.mark.parametrize("shape", ["1.5b", "7b"])
def test_fp8_gemm_covers_every_matmul_parameter_of_the_shape(shape):
    """bench/fp8_gemm.py's GEMMs are the shape's matmuls: with the norms and QKV biases (not GEMMs)
    they add up to the parameters the MFU counts."""
    from nemo_ext.models.hf_config import matmul_parameters

    b = bench("fp8_gemm")
    cfg = b.shape_config(shape)
    gemms = {g.name: g for g in b.shape_gemms(cfg)}
    layer = sum(g.in_features * g.out_features for g in gemms.values() if g.per_layer)
    not_gemms = cfg.num_hidden_layers * (2 * cfg.hidden_size + gemms["qkv"].out_features) + cfg.hidden_size
    output = gemms["output_layer"].in_features * gemms["output_layer"].out_features
    assert cfg.num_hidden_layers * layer + output + not_gemms == matmul_parameters(cfg)
    assert gemms["mlp_gate_up"].flops(8192) == 6 * 8192 * cfg.hidden_size * 2 * cfg.intermediate_size


def test_fp8_gemm_step_bound_is_amdahls():
    b = bench("fp8_gemm")
    gemms = [b.Gemm("a", 4, 4), b.Gemm("head", 4, 8, per_layer=False)]
    bf16, fp8 = {"a": 2.0, "head": 3.0}, {"a": 1.0, "head": 1.0}  # ms; the head stays bf16 in the step
    bound = b.step_bound(bf16, fp8, gemms, layers=10, step_s=0.046)  # 23 of 46 ms in GEMMs
    assert (bound["gemm_ms_bf16"], bound["gemm_ms_fp8"]) == (23.0, 13.0)
    assert bound["gemm_share"] == pytest.approx(0.5)
    assert bound["step_speedup_bound"] == pytest.approx(46 / 36)
    with pytest.raises(ValueError, match="--step-s 0.01: shorter than the step's bf16 GEMMs"):
        b.step_bound(bf16, fp8, gemms, layers=10, step_s=0.01)


def test_fp8_gemm_runs_its_bf16_baseline_on_the_cpu(tmp_path):
    """Without Transformer Engine on a GPU, the bench times the bf16 GEMMs alone and says so."""
    import json
    import subprocess

    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fp8_gemm.py"), "--shape", "tiny", "--tokens", "64",
                           "--warmup", "1", "--repeats", "2", "--step-s", "10", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert "the bf16 baseline alone" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    timed = [r for r in rows if "gemm" in r]
    assert [r["gemm"] for r in timed] == ["qkv", "attention_out", "mlp_gate_up", "mlp_down", "output_layer"]
    assert all(r["variant"] == "bf16" and r["ms"] > 0 for r in timed)
    (summary,) = [r for r in rows if "gemm_speedup" in r]
    assert summary["gemm_speedup"] == 1.0 and summary["step_speedup_bound"] == 1.0
    layers = summary["layers"]
    expected = sum(r["ms"] * (1 if r["gemm"] == "output_layer" else layers) for r in timed)
    assert summary["gemm_ms_bf16"] == pytest.approx(expected)
    assert summary["gemm_share"] == pytest.approx(expected / 1e4)
    with pytest.raises(subprocess.CalledProcessError) as bad:
        subprocess.run([sys.executable, str(ROOT / "bench" / "fp8_gemm.py"), "--fp8-recipe", "delayed,mxfp8"],
                       capture_output=True, text=True, check=True)
    assert "--fp8-recipe: mxfp8 unknown" in bad.value.stderr
