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
