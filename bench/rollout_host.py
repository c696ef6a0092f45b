"""Host cost of vLLM's per-token bookkeeping: the rollout engine's generation (``generation.generate``
as ``RolloutEngine`` calls it: no detokenizing while generating, each finished response decoded once,
outputs built only when a request finishes, flat log-probs) against vLLM's own ``LLM.generate`` with
its defaults (the baseline) and with detokenizing off alone, same engine, prompts and seeds,
alternating in one process; and, for scale, the rollout setting unseeded (vLLM's sampler without a
generator per response: what per-response seeds cost).

    PYTHONPATH=. .venv/bin/python bench/rollout_host.py [--requests 256] [--max-tokens 128]

With hundreds of responses in flight, vLLM's per-token host work (its incremental detokenizer, one
decode per sampled token's log-prob entry, a ``Logprob`` and a dict per token, every request's output
rebuilt at every step) runs between decode steps and bounds decode speed (docs/performance.md,
"Generation is host-bound"). On the CPU with the tiny model the forward pass is cheap, so the ratio
is mostly that host work; on a GPU the same Python runs between CUDA-graph steps (``python3
bench/rollout_host.py`` there: the tiny model's forward is negligible, so it measures the GPU host's
rate). The seeded settings sample identical tokens with identical log-probs and texts (checked here).
The tiny checkpoint is built here, never downloaded.
"""

from __future__ import annotations

import argparse
import json

from vllm import SamplingParams

from bench.tiny_vllm import best_of, tiny_engine_and_prompts
from nemo_ext.generation import Completion, _completion, generate

GROUP = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=256, help=f"responses in flight (prompts x {GROUP})")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm, prompts = tiny_engine_and_prompts(args.requests // GROUP, max_model_len=512)
    sampling = dict(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, ignore_eos=True)

    def vllm_generate(detokenize: bool) -> list[Completion]:
        """vLLM's LLM.generate, one request per response with the seed the rollout engine gives it."""
        params = [SamplingParams(n=1, seed=i + j, logprobs=0, detokenize=detokenize, **sampling)
                  for i in range(len(prompts)) for j in range(GROUP)]
        outs = llm.generate([p for p in prompts for _ in range(GROUP)], params, use_tqdm=False)
        return [_completion(o.outputs[0], p.seed, True, None if detokenize else llm.get_tokenizer())
                for o, p in zip(outs, params, strict=True)]

    def ours(seed) -> list[Completion]:
        groups = generate(llm, prompts, n=GROUP, seed=seed, logprobs=True, detokenize=False, **sampling)
        return [c for g in groups for c in g]

    variants = {"vllm_defaults": lambda: vllm_generate(True), "vllm_no_detokenize": lambda: vllm_generate(False),
                "rollout": lambda: ours(list(range(len(prompts)))), "rollout_unseeded": lambda: ours(None)}
    variants["vllm_defaults"]()  # warm-up
    best, samples = best_of(variants, args.repeats)

    def sample_facts(name: str) -> list[tuple]:
        return [(c.token_ids, c.logprobs, c.text) for c in samples[name]]

    same = sample_facts("vllm_defaults") == sample_facts("vllm_no_detokenize") == sample_facts("rollout")
    tokens = sum(len(c.token_ids) for c in samples["rollout"])
    print(json.dumps({"requests": len(samples["rollout"]), "generated_tokens": tokens, "identical_samples": same,
                      **{f"{v}_tokens_per_s": round(tokens / best[v]) for v in variants},
                      "rollout_speedup": round(best["vllm_defaults"] / best["rollout"], 3),
                      "no_detokenize_speedup": round(best["vllm_defaults"] / best["vllm_no_detokenize"], 3),
                      "unseeded_speedup": round(best["rollout"] / best["rollout_unseeded"], 3)}))


if __name__ == "__main__":
    main()
