"""The one-GPU RL recipe (recipes/conf/rl/acereason_1.5b_1gpu.yaml) runs on one GPU (marker ``gpu``).

Three steps of its first stage (8K responses, groups of 8, its micro-batches, memory share, sleep
mode, compile without recompute, the temperature probe) on random weights of the Qwen2.5-1.5B shape
with the synthetic prompts, eight prompts a step instead of 64 and two in the probe instead of eight
(its six temperatures x 16 responses, one batch) to keep the check to minutes. Random
weights solve nothing and rarely stop, so every group has equal rewards and the update is skipped:
what this shows is that generation, the probe, the log-prob pass, sync and export run at the
recipe's lengths on one card; the trained update's memory at the same settings is measured by
``bench/rl_step.py``, which draws rewards at random (docs/performance.md).
"""

from __future__ import annotations

import pytest
import torch

from nemo_ext.backends.attention import TE_ATTENTION, VARLEN_ATTENTION
from nemo_ext.backends.te_import import te_available
from tests.gpu.test_rollout_gpu import cuda_vllm_missing, run_worker

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_vllm_missing() is not None, reason=str(cuda_vllm_missing()))]


def test_the_one_gpu_recipe_runs_three_steps_at_its_lengths(tmp_path):
    r = run_worker(tmp_path, "recipe", "torch", str(tmp_path / "random_1.5b"), steps=3, prompts=8, probe_prompts=2)
    steps = [row for row in r["rows"] if "time/step" in row]
    keys = ("time/step", "time/generate", "response_length/mean", "mismatch/kl")
    print("one-GPU recipe:", r["wall_s"], r["attention"],
          [{k: row[k] for k in keys if k in row} for row in steps])
    assert r["max_response_len"] == 8192 and r["group_size"] == 8
    # the recipe's auto resolves to TE's cuDNN attention for its trainer where TE imports (on Hopper)
    hopper = torch.cuda.get_device_capability() >= (9, 0)
    assert r["attention"] == (TE_ATTENTION if te_available() and hopper else VARLEN_ATTENTION)
    assert len(steps) == 3
    assert all(row["response_length/max"] <= 8192 for row in steps)
    assert max(row["response_length/mean"] for row in steps) > 4096  # random weights run long
    assert all(row["mismatch/kl"] < 1e-2 for row in steps if "mismatch/kl" in row)
    assert any(k.startswith("probe/entropy@") for k in r["rows"][0])  # the probe ran at stage start
    assert r["exported"]
