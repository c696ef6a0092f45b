"""Host cost of vLLM's per-token bookkeeping: the rollout engine's generation (``generation.generate``
as ``RolloutEngine`` calls it: no detokenizing while generating, each finished response decoded once,
outputs built only when a request finishes, flat log-probs) against vLLM's own ``LLM.generate`` with
its defaults (the baseline) and with detokenizing off alone, same engine, prompts and seeds,
alternating in one process; and, for scale, the rollout setting unseeded (vLLM's sampler without a
generator per response: what per-response seeds cost).

    PYTHONPATH=. .venv/bin/python bench/rollout_host.py [--requests 256] [--max-tokens 128]
    python3 bench/rollout_host.py --shape 1.5b --requests 512 --max-tokens 1024 --variants rollout,rollout_unseeded

With hundreds of responses in flight, vLLM's per-token host work (its incremental detokenizer, one
decode per sampled token's log-prob entry, a ``Logprob`` and a dict per token, every request's output
rebuilt at every step) runs between decode steps and bounds decode speed (docs/performance.md,
"Generation is host-bound"). On the CPU with the tiny model the forward pass is cheap, so the ratio
is mostly that host work; on a GPU the same Python runs between CUDA-graph steps (``python3
bench/rollout_host.py`` there: the tiny model's forward is negligible, so it measures the GPU host's
rate). ``--shape 1.5b`` runs a real shape on random weights instead, in the process as the rollout
engine runs it (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so that the host work is timed against real
decode steps. The seeded settings sample identical tokens with identical log-probs and texts
(checked here, among those run). The checkpoints are built here, never downloaded.
"""

from __future__ import annotations

import argparse
import json
import os

from vllm import SamplingParams

from bench.shapes import SHAPES
from bench.tiny_vllm import best_of, engine_and_prompts
from nemo_ext.generation import Completion, _completion, generate

GROUP = 8
# vllm_defaults: vLLM's LLM.generate as it comes; vllm_no_detokenize: the same, detokenizing off;
# rollout: generation.generate as the rollout engine calls it; rollout_unseeded: the same, no seeds
VARIANTS = ("vllm_defaults", "vllm_no_detokenize", "rollout", "rollout_unseeded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=256, help=f"responses in flight (prompts x {GROUP})")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", choices=["tiny", *sorted(SHAPES)], default="tiny",
                        help="tiny: the project's tiny model; else that shape on random weights (a GPU)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.7, help="the one-GPU recipe's share")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}; the first is the speedups' baseline")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    if unknown := sorted(set(chosen) - set(VARIANTS)):
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as nemo_ext.rl.rollout runs the engine
    engine_kwargs = {} if args.shape == "tiny" else {"gpu_memory_utilization": args.gpu_memory_utilization}
    llm, prompts = engine_and_prompts(args.requests // GROUP, max_model_len=args.max_tokens + 256,
                                      shape=args.shape, **engine_kwargs)
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

    runs = {"vllm_defaults": lambda: vllm_generate(True), "vllm_no_detokenize": lambda: vllm_generate(False),
            "rollout": lambda: ours(list(range(len(prompts)))), "rollout_unseeded": lambda: ours(None)}
    variants = {name: runs[name] for name in chosen}
    for run in variants.values():  # warm-up: each variant's first run can compile kernels of its own
        run()
    best, samples = best_of(variants, args.repeats)
    seeded = [name for name in chosen if name != "rollout_unseeded"]
    facts = [[(c.token_ids, c.logprobs, c.text) for c in samples[name]] for name in seeded]
    tokens = sum(len(c.token_ids) for c in samples[chosen[0]])
    print(json.dumps({"shape": args.shape, "requests": len(samples[chosen[0]]), "generated_tokens": tokens,
                      "identical_samples": all(f == facts[0] for f in facts),
                      **{f"{v}_tokens_per_s": round(tokens / best[v]) for v in variants},
                      **{f"{v}_speedup": round(best[chosen[0]] / best[v], 3) for v in chosen[1:]},
                      "baseline": chosen[0]}))


if __name__ == "__main__":
    main()
