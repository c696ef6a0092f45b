"""The rollout engine: vLLM colocated with the trainer, fed new weights in memory after every update.

Weight sync without a disk round trip (../shared/FACTS.md, vLLM): the trainer's full tensors under
Hugging Face names go through ``llm.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``
(vLLM's in-place reload, which also redoes its post-load weight processing), then
``llm.reset_prefix_cache()`` so no KV computed with the old weights is reused. On GPU with
``sleep_mode``, vLLM sleeps during the update (level 1: weights offloaded to host memory, KV cache
dropped) and wakes its weights before the sync and its KV cache after, so trainer and engine take
turns with the GPU memory. On CPU there is nothing to free and sleep is a no-op.

Left out: separate rollout and training GPUs (weights sent by NCCL broadcast) and asynchronous,
off-policy rollouts; the paper is strictly on-policy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence

import torch

from nemo_ext.config.rl import RolloutConfig
from nemo_ext.generation import Completion, build_engine, generate, iter_generate


def _seeds(seed: int, n: int, count: int, positions: Sequence[int] | None) -> list[int]:
    return [seed + i * n for i in (range(count) if positions is None else positions)]


class RolloutEngine:
    """A vLLM engine started from ``model_path``; ``sample`` rolls out groups, ``load_weights`` syncs.

    The update cycle on GPU with sleep mode: ``sleep()`` before the trainer's passes, ``load_weights()``
    after the optimizer step (wakes the weights, copies the new ones in), ``wake()`` (the KV cache
    back). Each returns its seconds. On CPU, or without sleep mode, sleep and wake do nothing.

    ignore_eos: every response runs to its length limit (benchmarks only: the worst case for memory).
    Responses are generated with ``detokenize=False`` and decoded once each when they finish
    (``generation.iter_generate``): vLLM's per-token detokenizing is host time that bounds decode
    speed with hundreds of responses in flight.
    """

    def __init__(self, model_path: str, cfg: RolloutConfig, max_model_len: int, seed: int,
                 ignore_eos: bool = False):
        self.cfg = cfg
        self.ignore_eos = ignore_eos
        on_gpu = torch.cuda.is_available()
        if cfg.tensor_parallel_size != 1:
            raise NotImplementedError("rollout.tensor_parallel_size > 1 needs vLLM's external launcher, which "
                                      "this loop does not set up; use 1")
        # In process on GPU too: the weight sync hands vLLM an iterator of live tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.sleep_mode = cfg.sleep_mode and on_gpu
        self.llm = build_engine(
            model_path,
            tensor_parallel_size=cfg.tensor_parallel_size,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_sleep_mode=self.sleep_mode,
            enforce_eager=True if cfg.enforce_eager else None,  # None: eager on CPU, compiled on GPU
            dtype="float32" if cfg.dtype == "auto" and not on_gpu else cfg.dtype,
            kv_cache_dtype=cfg.kv_cache_dtype,
        )
        self.dropped: set[str] = set()  # what sleep took and is not back yet: "weights", "kv_cache"

    def _sampling(self, prompts: Sequence[str], n: int, temperature: float | Sequence[float], max_tokens: int,
                  seed: int, logprobs: bool, positions: Sequence[int] | None) -> dict:
        return dict(n=n, temperature=temperature, top_p=self.cfg.top_p, max_tokens=max_tokens,
                    seed=_seeds(seed, n, len(prompts), positions), logprobs=logprobs, ignore_eos=self.ignore_eos,
                    detokenize=False)

    def sample(self, prompts: Sequence[str], n: int, temperature: float | Sequence[float], max_tokens: int,
               seed: int, logprobs: bool = True, positions: Sequence[int] | None = None) -> list[list[Completion]]:
        """``n`` responses per prompt, with the sampled tokens' processed log-probs. Response j of the
        prompt at position i of the step's list gets seed ``seed + i * n + j``; ``positions`` gives
        those of ``prompts`` when they are a share of the list (data parallelism), so a response does
        not depend on how many ranks drew the step. ``temperature``: one, or one per prompt."""
        self._check_awake()
        return generate(self.llm, prompts, **self._sampling(prompts, n, temperature, max_tokens, seed, logprobs,
                                                             positions))

    def stream(self, prompts: Sequence[str], n: int, temperature: float | Sequence[float], max_tokens: int,
               seed: int, logprobs: bool = True, positions: Sequence[int] | None = None
               ) -> Iterator[tuple[int, int, Completion]]:
        """``sample``'s responses as they finish: ``(prompt index, response index, completion)``."""
        self._check_awake()
        return iter_generate(self.llm, prompts, **self._sampling(prompts, n, temperature, max_tokens, seed,
                                                                  logprobs, positions))

    def _check_awake(self) -> None:
        if self.dropped:
            raise RuntimeError("the rollout engine is asleep: load_weights() and wake() before generating")

    def sleep(self) -> float:
        """Free the GPU for the trainer: level 1 offloads vLLM's weights to host memory and drops its
        KV cache. Returns the seconds it took (0 on CPU or without sleep mode)."""
        if not self.sleep_mode or self.dropped:
            return 0.0
        start = time.perf_counter()
        self.llm.sleep(level=1)
        self.dropped = {"weights", "kv_cache"}
        return time.perf_counter() - start

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Copy new weights into the engine (waking its weights first if asleep; its KV cache stays
        dropped until ``wake``); returns the seconds it took."""
        start = time.perf_counter()
        if "weights" in self.dropped:
            self._wake_up({"weights"})
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def wake(self) -> float:
        """Bring back whatever sleep dropped (weights, KV cache); returns the seconds it took."""
        if not self.dropped:
            return 0.0
        start = time.perf_counter()
        self._wake_up(self.dropped)
        return time.perf_counter() - start

    def _wake_up(self, tags: set[str]) -> None:
        # The trainer's freed blocks stay reserved by torch's caching allocator, outside the memory
        # vLLM's pool wakes into: hand them back to the driver first.
        torch.cuda.empty_cache()
        self.llm.wake_up(tags=sorted(tags))
        self.dropped -= tags
