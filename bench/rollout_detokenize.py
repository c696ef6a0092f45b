"""Host cost of detokenizing while generating: the rollout engine's setting (``detokenize=False``, each
finished response decoded once) against vLLM detokenizing every token as it comes (the baseline), same
engine, prompts and seeds, alternating in one process; and, for scale, the same unseeded (vLLM's
sampler without a generator per response: what per-response seeds cost).

    PYTHONPATH=. .venv/bin/python bench/rollout_detokenize.py [--requests 256] [--max-tokens 128]

With hundreds of responses in flight, vLLM's per-token host work (its incremental detokenizer, and
one decode per sampled token's log-prob entry) runs between decode steps and bounds decode speed
(docs/performance.md, "Generation is host-bound"). On the CPU with the tiny model the forward pass is
cheap, so the ratio is mostly that host work; on a GPU the same Python runs between CUDA-graph
steps (``python3 bench/rollout_detokenize.py`` there: the tiny model's forward is negligible, so it
measures the GPU host's rate). The two seeded settings sample identical tokens with identical
log-probs and texts (checked here). The tiny checkpoint is built here, never downloaded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.synthetic import make_problems
from nemo_ext.generation import build_engine, generate
from nemo_ext.models.tiny import build_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=256, help="responses in flight (prompts x 8)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    llm = build_engine(str(build_tiny_checkpoint(tmp / "tiny")), seed=0, max_model_len=512)
    prompts = [render_prompt(p["question"], "math") for p in make_problems(args.requests // 8, seed=1, split="test")]
    sampling = dict(n=8, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=list(range(len(prompts))),
                    logprobs=True, ignore_eos=True)

    variants = {"vllm_detokenizes": dict(detokenize=True), "decoded_once": dict(detokenize=False),
                "decoded_once_unseeded": dict(detokenize=False, seed=None)}

    def run(variant: str) -> tuple[float, list]:
        start = time.perf_counter()
        groups = generate(llm, prompts, **{**sampling, **variants[variant]})
        return time.perf_counter() - start, [c for g in groups for c in g]

    run("vllm_detokenizes")  # warm-up
    best, samples = dict.fromkeys(variants, float("inf")), {}
    for _ in range(args.repeats):
        for variant in variants:
            seconds, samples[variant] = run(variant)
            best[variant] = min(best[variant], seconds)
    same = all((a.token_ids, a.logprobs, a.text) == (b.token_ids, b.logprobs, b.text)
               for a, b in zip(samples["vllm_detokenizes"], samples["decoded_once"], strict=True))
    tokens = sum(len(c.token_ids) for c in samples["decoded_once"])
    print(json.dumps({"requests": len(samples["decoded_once"]), "generated_tokens": tokens,
                      "identical_samples": same, **{f"{v}_tokens_per_s": round(tokens / best[v]) for v in variants},
                      "speedup": round(best["vllm_detokenizes"] / best["decoded_once"], 3),
                      "unseeded_speedup": round(best["decoded_once"] / best["decoded_once_unseeded"], 3)}))


if __name__ == "__main__":
    main()
