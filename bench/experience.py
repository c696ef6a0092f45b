"""The GRPO step's "advantages" phase (``rl.experience.build_experience``: scored groups -> packed
micro-batches) on a step of the 1-GPU bench's size, against a baseline run in the same process.

    PYTHONPATH=. .venv/bin/python bench/experience.py [--prompts 16] [--group 8] [--max-len 8192] [--repeats 5]
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/experience.py --prompts 8 --max-len 32768 --busy 2

Input: ``--prompts`` x ``--group`` responses of ``--max-len`` tokens each (every one at the maximum,
as in ``bench/rl_step.py``), 120-token prompts, token ids and log-probs as Python lists (the form
vLLM hands them over in), half of each group rewarded. Reported: the median of ``--repeats`` wall
times of each variant, and their ratio against the baseline. ``--busy N`` keeps N other processes
spinning meanwhile, as the GPU machine's cores are while a step runs (vLLM's and the reward pool's).

- Baseline: the micro-batches built the way the loop did before 2026-12-03, every per-token value a
  Python list element (prompt masks, advantages, weights and log-probs of every token), packed by the
  same ``pack_sequences``, on the process's torch threads.
- ``build_experience``: what the loop runs (one tensor per response and field, concatenated), on
  one torch thread (its default).
- ``build_experience_all_threads``: the same on the process's torch threads (``threads=None``), as it
  ran before 2026-12-04.

All three must give equal micro-batches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from nemo_ext.config.rl import AdvantageConfig
from nemo_ext.data.batch import PackedBatch, pack_sequences
from nemo_ext.data.packing import first_fit_decreasing
from nemo_ext.rl.advantages import group_advantages
from nemo_ext.rl.experience import Group, build_experience, step_tensors
from nemo_ext.rl.losses import ADVANTAGES, ROLLOUT_LOGPROBS, WEIGHTS

PROMPT_TOKENS = 120


def synthetic_groups(prompts: int, group: int, max_len: int, seed: int = 0) -> list[Group]:
    rng = random.Random(seed)
    out = []
    for _ in range(prompts):
        completions = [SimpleNamespace(token_ids=[rng.randrange(151_000) for _ in range(max_len)],
                                       logprobs=[-rng.random() for _ in range(max_len)], truncated=False)
                       for _ in range(group)]
        out.append(Group(prompt=None, prompt_ids=[rng.randrange(151_000) for _ in range(PROMPT_TOKENS)],
                         completions=completions, rewards=[float(g % 2) for g in range(group)],
                         passed=[bool(g % 2) for g in range(group)]))
    return out


def per_token_lists(groups: list[Group], micro_batch_tokens: int) -> list[PackedBatch]:
    """The baseline: every per-token value a list element, as the loop built them before."""
    cfg = AdvantageConfig()
    advantages = group_advantages(step_tensors(groups).rewards, cfg.estimator, cfg.eps)
    seqs, masks, fields = [], [], {ADVANTAGES: [], WEIGHTS: [], ROLLOUT_LOGPROBS: []}
    for n, group in enumerate(groups):
        p = len(group.prompt_ids)
        for g, c in enumerate(group.completions):
            r = len(c.token_ids)
            seqs.append(group.prompt_ids + list(c.token_ids))
            masks.append([0] * p + [1] * r)
            fields[ADVANTAGES].append([0.0] * p + [float(advantages[n, g])] * r)
            fields[WEIGHTS].append([0.0] * p + [1.0] * r)
            fields[ROLLOUT_LOGPROBS].append([0.0] * p + list(c.logprobs))
    bins = first_fit_decreasing([len(s) for s in seqs], max(micro_batch_tokens, max(map(len, seqs))))
    return [pack_sequences([seqs[i] for i in b], [masks[i] for i in b],
                           {k: [v[i] for i in b] for k, v in fields.items()}) for b in bins]


def assert_same_micro_batches(ours: list[PackedBatch], reference: list[PackedBatch]) -> None:
    assert len(ours) == len(reference), (len(ours), len(reference))
    for a, b in zip(ours, reference, strict=True):
        for name in ("input_ids", "position_ids", "cu_seqlens", "targets", "loss_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.token_fields.keys() == b.token_fields.keys()
        for name, values in b.token_fields.items():
            assert torch.equal(a.token_fields[name], values), name


def median_time(fn, repeats: int) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls (a stall in one call shows, unlike in the best), and
    the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# Spins until its parent is gone: a bench killed by a timeout's SIGTERM runs no ``finally``, and the
# spinners, in sessions of their own, would outlive it (on the GPU machine, 2026-12-04: spinning on
# into the next phase, and holding the output pipe open so that ``| tee`` never returned).
SPIN_WHILE_PARENT_LIVES = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent: pass\n"


def spinning(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy until terminated or until this process exits."""
    return [subprocess.Popen([sys.executable, "-c", SPIN_WHILE_PARENT_LIVES, str(os.getpid())], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-len", type=int, default=8192)
    p.add_argument("--micro-tokens", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--busy", type=int, default=0, help="other processes spinning on the host meanwhile")
    args = p.parse_args()
    groups = synthetic_groups(args.prompts, args.group, args.max_len)
    spinners = spinning(args.busy)
    try:
        seconds, built = {}, {}
        seconds["per_token_lists"], reference = median_time(lambda: per_token_lists(groups, args.micro_tokens),
                                                          args.repeats)
        for name, threads in (("build_experience", 1), ("build_experience_all_threads", None)):
            seconds[name], built[name] = median_time(
                lambda threads=threads: build_experience(groups, AdvantageConfig(), False, args.micro_tokens,
                                                         args.max_len, threads=threads), args.repeats)
    finally:
        for proc in spinners:
            proc.terminate()
    for batch in built.values():
        assert_same_micro_batches(batch.trained + batch.untrained, reference)
    tokens = sum(mb.num_tokens for mb in reference)
    print(json.dumps({"responses": args.prompts * args.group, "tokens": tokens, "micro_batches": len(reference),
                      "torch_threads": torch.get_num_threads(), "busy": args.busy,
                      **{f"{k}_s": round(v, 4) for k, v in seconds.items()},
                      **{f"{k}_speedup": round(seconds["per_token_lists"] / v, 2)
                         for k, v in seconds.items() if k != "per_token_lists"}}))


if __name__ == "__main__":
    main()
