"""GPU checks of the megatron backend (marker ``gpu``; run with ``make test-gpu`` on the GPU machine).

Each check starts real ``torchrun`` processes of ``megatron_worker.py`` on the project's tiny Qwen2
(4 layers, 2 query heads sharing 1 KV head, tied embeddings) and asserts on what rank 0 saved. Every
check runs under both layer specs (the ``impl`` fixture): Transformer Engine's, which
``backend=megatron`` picks by itself wherever TE imports, and the local one (skipped, with the
reason, where TE is missing).

fp32 comparisons under TE: TE runs fp32 GEMMs on TF32 tensor cores (cuBLASLt's
``CUBLAS_COMPUTE_32F_FAST_TF32``, its default), about 3e-4 relative error per product. The exact
checks set ``NVIDIA_TF32_OVERRIDE=0`` (cuBLAS then never uses TF32); one test states the bound of
the default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("megatron_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpus() < 1, reason="needs a CUDA GPU (torch sees none)")]

needs_two = pytest.mark.skipif(gpus() < 2, reason="needs 2 GPUs (TP=2 / PP=2 / CP=2)")
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
needs_te = pytest.mark.skipif(not HAVE_TE, reason="Transformer Engine is not installed")
IMPLS = [pytest.param("transformer_engine", marks=needs_te), pytest.param("local")]
NO_TF32 = {"NVIDIA_TF32_OVERRIDE": "0"}  # exact fp32 under TE (see the module docstring)


@pytest.fixture(scope="session", params=IMPLS)
def impl(request) -> str:
    """``model.transformer_impl`` of the check: each test runs once per layer spec."""
    return request.param


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    from nemo_ext.models.tiny import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", seed=0))


def run(tmp_path: Path, tiny: str, scenario: str, nproc: int = 1, name: str | None = None,
        env: dict | None = None, **flags) -> dict:
    out = tmp_path / f"{name or scenario}.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(WORKER),
           scenario, "--model", tiny, "--out", str(out)]
    for k, v in flags.items():
        cmd += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **(NO_TF32 if env is None else env)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


def test_megatron_logits_equal_hf_and_export_round_trips(tmp_path, tiny, impl):
    r = run(tmp_path, tiny, "hf_logits", impl=impl)
    print(f"hf_logits [{impl}]", {p: {k: v for k, v in d.items()} for p, d in r.items()})
    assert r["fp32"]["impl"] == r["bf16"]["impl"] == impl
    assert r["fp32"]["logits_rel_err"] < 1e-4
    assert r["fp32"]["logp_max_abs_err"] < 1e-3
    assert r["bf16"]["logits_rel_err"] < 2e-2
    assert r["bf16"]["logp_max_abs_err"] < 0.25
    for precision in ("fp32", "bf16"):  # the HF weights are imported and exported unchanged
        assert r[precision]["export_keys_equal"] and r[precision]["export_max_abs_diff"] == 0.0


@needs_te
def test_transformer_engine_fp32_logits_with_tf32_stay_within_its_rounding(tmp_path, tiny):
    """TE's default fp32 path (TF32 GEMMs, no override): the bound of 10-bit mantissa products, not
    exactness; the local spec and TE without TF32 meet 1e-4 above."""
    r = run(tmp_path, tiny, "hf_logits", impl="transformer_engine", env={})
    print("hf_logits [transformer_engine, TF32]", r["fp32"])
    assert r["fp32"]["logits_rel_err"] < 3e-3


def test_packed_attention_equals_each_sequence_alone(tmp_path, tiny, impl):
    """A packed row's log-probs and entropies equal those of each sequence packed alone: TE's THD
    attention (cuDNN) and the local varlen kernel both stop at ``cu_seqlens``."""
    r = run(tmp_path, tiny, "packed_vs_alone", impl=impl)
    print(f"packed vs alone [{impl}]", r)
    assert r["fp32"]["impl"] == impl
    assert r["fp32"]["logp_max_abs_diff"] < 1e-4 and r["fp32"]["entropy_max_abs_diff"] < 1e-4
    assert r["bf16"]["logp_max_abs_diff"] < 0.1 and r["bf16"]["entropy_max_abs_diff"] < 0.1


def _assert_same_grads(ref: dict, other: dict, rtol: float = 1e-4):
    assert abs(ref["loss"] - other["loss"]) < 1e-5 * abs(ref["loss"])
    assert ref["grads"].keys() == other["grads"].keys()
    for name, g in ref["grads"].items():
        err = float((other["grads"][name] - g).norm() / g.norm().clamp_min(1e-12))
        assert err < rtol, f"{name}: relative gradient error {err:.2e}"


@pytest.fixture(scope="session")
def tp1_grads(tmp_path_factory, tiny, impl) -> dict:
    return run(tmp_path_factory.mktemp("tp1"), tiny, "grads", impl=impl)


def test_megatron_gradients_equal_the_hf_models(tp1_grads, impl):
    """fp32 loss and gradients of every parameter against the Hugging Face model's own autograd."""
    _assert_hf_grads(tp1_grads, impl)


def test_megatron_gradients_with_kept_logits_equal_the_hf_models(tmp_path, tiny, impl):
    """The same with ``model.keep_logits``: the output layer's backward from the kept logits, its
    weight gradient in one GEMM over all tokens."""
    _assert_hf_grads(run(tmp_path, tiny, "grads", impl=impl, **{"keep-logits": True}), impl)


@needs_te
def test_gradients_accumulated_inside_te_gemms_equal_the_hf_models(tmp_path, tiny):
    """``model.gradient_accumulation_fusion``: TE's weight-gradient GEMMs add each of the two
    micro-batches' gradients into ``main_grad`` themselves."""
    result = run(tmp_path, tiny, "grads", impl="transformer_engine", **{"grad-accum-fusion": "on"})
    assert result["fused_layers"] >= 4 * 4  # qkv, attention out, MLP in and out of each of the 4 layers
    assert result["added_in_gemm"] >= 4 * 4  # and their GEMMs did add into main_grad
    _assert_hf_grads(result, "transformer_engine")


@needs_te
def test_fused_gradient_accumulation_under_fp8_sums_every_micro_batch(tmp_path, tiny):
    """Under FP8 the schedule marks each step's first micro-batch, and TE then writes ``main_grad``
    instead of adding to it: the fused gradients of two micro-batches must still equal the unfused ones
    (the same FP8 GEMMs; only where the sum is taken differs). A sum that kept one micro-batch would be
    off by about half."""
    plain = run(tmp_path, tiny, "grads", name="plain", impl="transformer_engine", fp8="hybrid",
                **{"grad-accum-fusion": "off"})
    fused = run(tmp_path, tiny, "grads", name="fused", impl="transformer_engine", fp8="hybrid",
                **{"grad-accum-fusion": "on"})
    assert plain["fused_layers"] == 0 and fused["fused_layers"] >= 16
    assert plain["added_in_gemm"] == 0 and fused["added_in_gemm"] >= 16
    errors = {n: float((fused["grads"][n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in plain["grads"].items()}
    print("fused vs plain FP8 gradients, worst:", sorted(errors.items(), key=lambda kv: -kv[1])[:4])
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert max(errors.values()) < 1e-3


def _assert_hf_grads(result: dict, impl: str) -> None:
    assert result["impl"] == impl
    ref, mc = result["hf_grads"], result["grads"]
    errors = {name: float((mc[name] - g).norm() / g.norm().clamp_min(1e-12)) for name, g in ref.items() if name in mc}
    print("megatron vs HF gradients, worst:", sorted(errors.items(), key=lambda kv: -kv[1])[:6],
          "loss", result["loss"], result["hf_loss"], "missing", sorted(ref.keys() - mc.keys()))
    assert abs(result["loss"] - result["hf_loss"]) < 1e-5 * abs(result["hf_loss"])
    assert mc.keys() <= ref.keys() <= mc.keys() | {"lm_head.weight"}
    assert max(errors.values()) < 1e-4


@needs_two
@pytest.mark.parametrize("layout", [dict(tp=2), dict(tp=2, sp=True), dict(pp=2), dict(cp=2)],
                         ids=["tp2", "tp2_sp", "pp2", "cp2"])
def test_tensor_and_pipeline_parallel_give_the_tp1_loss_and_gradients(tmp_path, tiny, tp1_grads, layout, impl):
    ref = tp1_grads
    other = run(tmp_path, tiny, "grads", nproc=2, name="layout", impl=impl, **layout)
    print(layout, "loss", ref["loss"], other["loss"])
    _assert_same_grads(ref, other)


@needs_two
def test_context_parallel_bf16_logprobs_match_one_gpu(tmp_path, tiny, impl):
    """CP=2 in bf16 (local spec: the flash-attention kernel on chunk-vs-prefix segments, causality
    aligned at the end; TE: its THD context-parallel attention on the same load-balanced shards):
    log-probs, entropies and first loss agree with one GPU's within bf16 rounding."""
    one = run(tmp_path, tiny, "logprobs", name="cp1", precision="bf16", impl=impl)
    two = run(tmp_path, tiny, "logprobs", nproc=2, name="cp2", precision="bf16", cp=2, impl=impl)
    mask = one["mask"]
    err = (two["logp"] - one["logp"])[mask].abs()
    print("cp2 bf16: logp max/mean abs err", float(err.max()), float(err.mean()), "loss", one["loss"], two["loss"])
    assert two["logp"].shape == one["logp"].shape
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.25
    assert float((two["entropy"] - one["entropy"])[mask].abs().mean()) < 0.02
    assert abs(two["loss"] - one["loss"]) < 0.01 * abs(one["loss"])
    # the gradient norm megatron computes over the CP-reduced, optimizer-sharded gradients
    assert abs(two["grad_norm"] - one["grad_norm"]) < 0.02 * one["grad_norm"]


@needs_two
def test_checkpoint_saved_at_tp2_loads_at_tp1(tmp_path, tiny, impl):
    ckpt = tmp_path / "ckpt"
    saved = run(tmp_path, tiny, "ckpt_save", nproc=2, tp=2, ckpt=ckpt, impl=impl)
    assert sorted(p.name for p in (ckpt / "step_00000002").iterdir()) == ["layout.json", "megatron",
                                                                          "trainer_state.pt"]
    loaded = run(tmp_path, tiny, "ckpt_load", tp=1, ckpt=ckpt, impl=impl)
    _assert_same_checkpoint(saved, loaded)


@needs_te
@pytest.mark.parametrize("saved_impl,loaded_impl", [("transformer_engine", "local"), ("local", "transformer_engine")],
                         ids=["te_to_local", "local_to_te"])
def test_checkpoint_written_under_one_layer_spec_loads_under_the_other(tmp_path, tiny, saved_impl, loaded_impl):
    """megatron's local spec names its norms as TE's fused norm+linear does in checkpoints
    (``sharded_state_dict_keys_map``): a run can switch specs across a restart."""
    ckpt = tmp_path / "ckpt"
    saved = run(tmp_path, tiny, "ckpt_save", ckpt=ckpt, impl=saved_impl)
    loaded = run(tmp_path, tiny, "ckpt_load", ckpt=ckpt, impl=loaded_impl)
    assert (saved["impl"], loaded["impl"]) == (saved_impl, loaded_impl)
    _assert_same_checkpoint(saved, loaded)


def _assert_same_checkpoint(saved: dict, loaded: dict) -> None:
    print("ckpt", float((loaded["logp"] - saved["logp"]).abs().max()), saved["next_loss"], loaded["next_loss"])
    assert loaded["extra"] == {"data_position": 2} and loaded["step"] == 2
    torch.testing.assert_close(loaded["logp"], saved["logp"], rtol=0, atol=1e-4)
    torch.testing.assert_close(loaded["entropy"], saved["entropy"], rtol=0, atol=1e-4)
    # The optimizer state came along: the next step matches the uninterrupted run's.
    assert abs(loaded["next_loss"] - saved["next_loss"]) < 1e-4 * abs(saved["next_loss"])


@pytest.fixture(scope="session")
def sft_curves(tmp_path_factory, tiny, impl) -> dict:
    return run(tmp_path_factory.mktemp("sft"), tiny, "sft", steps=50, impl=impl)


def test_fifty_sft_steps_lower_the_loss(sft_curves, impl):
    assert sft_curves["impl"] == impl
    mc = sft_curves["megatron"]
    print("sft megatron", [round(x, 3) for x in mc])
    first, last = sum(mc[:5]) / 5, sum(mc[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_megatron_and_torch_backends_train_alike(sft_curves):
    assert "torch_error" not in sft_curves, sft_curves.get("torch_error")
    mc, tb = sft_curves["megatron"], sft_curves["torch"]
    print("sft torch", [round(x, 3) for x in tb])
    assert abs(mc[0] - tb[0]) < 0.05 * tb[0]  # same weights, same data: the same first loss
    assert abs(sum(mc[-5:]) - sum(tb[-5:])) < 0.25 * sum(tb[-5:])


@needs_two
def test_sft_recipe_trains_with_tensor_parallelism(tmp_path, impl):
    """The recipe command itself (dist.launch, the SFT loop, megatron at TP=2): the loop must deal the
    same bins to both tensor-parallel ranks of the one replica (it once dealt them by world rank,
    and the TP all-reduces of unequal batches hung)."""
    out = tmp_path / "sft"
    cmd = [sys.executable, str(ROOT / "recipes" / "sft.py"), "backend=megatron", "trainer.devices=2",
           "model.tensor_model_parallel_size=2", f"model.transformer_impl={impl}", "trainer.accelerator=gpu",
           "trainer.max_steps=60", "logging.log_every=10", "checkpoint.save_every=30", "eval.num_problems=20",
           f"output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    losses = [row["train/loss"] for row in map(json.loads, (out / "logs" / "metrics.jsonl").read_text().splitlines())]
    print("sft recipe, TP=2: losses every 10 steps", [round(x, 3) for x in losses])
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_problems"] == 20 and (out / "hf" / "config.json").exists()


@pytest.fixture(scope="session")
def rl_reference(tmp_path_factory, tiny, impl) -> dict:
    """One GRPO update on one GPU: megatron (TP = 1), then the torch backend on the same rollouts."""
    return run(tmp_path_factory.mktemp("rl1"), tiny, "rl_update", impl=impl)


def _assert_same_update(ref: dict, other: dict) -> None:
    """The same metrics (entropy and mismatch, loss, gradient norm) and the same weights
    after the step, to fp32 noise; the step moved the weights far more than that (lr 1e-3). Adam's
    first step is lr * g / (|g| + eps): for gradients near eps = 1e-8 it magnifies fp32 noise up to
    lr * noise / eps, about 2e-5 here (seen: 1.7e-5 to 2.0e-5), hence 5% of lr."""
    m, r = other["metrics"], ref["metrics"]
    print("update metrics (other, reference):", {k: (m[k], r[k]) for k in r if k in m and not k.startswith("time")})
    print("weights after the step, max abs difference:",
          max(float((w - ref["weights"][name]).abs().max()) for name, w in other["weights"].items()))
    assert m["loss_tokens"] == r["loss_tokens"] and m["update/trained_tokens"] == r["update/trained_tokens"]
    for key in ("entropy", "mismatch/kl", "mismatch/max_abs", "update/loss", "update/grad_norm"):
        assert abs(m[key] - r[key]) <= 1e-4 * abs(r[key]) + 1e-7, (key, m[key], r[key])
    # the tiny model ties its embeddings: megatron, like HF checkpoints, leaves the tied lm_head out
    assert other["weights"].keys() <= ref["weights"].keys() <= other["weights"].keys() | {"lm_head.weight"}
    for name, w in other["weights"].items():
        moved = float((ref["weights"][name] - ref["initial"][name]).abs().max())
        diff = float((w - ref["weights"][name]).abs().max())
        assert moved > 5e-4 and diff < 5e-5, (name, moved, diff)


def test_grpo_update_on_megatron_equals_the_torch_backend(rl_reference, impl):
    assert rl_reference["impl"] == impl
    print(f"rl update, one GPU [{impl}]", {k: round(v, 6) for k, v in rl_reference["megatron"]["metrics"].items()
                                 if not k.startswith("time")})
    _assert_same_update(rl_reference["torch"], rl_reference["megatron"])


@needs_two
@pytest.mark.parametrize("layout", [dict(tp=2), dict(tp=1)], ids=["tp2", "dp2"])
def test_grpo_update_on_two_pinned_gpus_equals_one(tmp_path, tiny, rl_reference, layout, impl):
    """The RL setup pins each rank to its own GPU (for its vLLM engine); megatron then trains across
    them: TP = 2 (one replica: both ranks train every micro-batch) or DP = 2 (two replicas, each a share)."""
    other = run(tmp_path, tiny, "rl_update", nproc=2, impl=impl, **layout)["megatron"]
    assert other["device"] == "cuda:0" and other["replicas"] == (1 if layout["tp"] == 2 else 2)
    _assert_same_update(rl_reference["torch"], other)
