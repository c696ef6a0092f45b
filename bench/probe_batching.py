"""The RL temperature probe's rollouts: every candidate temperature in one vLLM batch (what
``grpo.probe_temperature`` does, one temperature per prompt) against one batch per temperature after
another (the baseline, what it did before), same engine, prompts and seeds, alternating in one process.

    PYTHONPATH=. .venv/bin/python bench/probe_batching.py [--prompts 8] [--max-tokens 128]

One batch per temperature waits for each batch's longest response in turn, decoding few responses at
a time near each batch's end; one batch for all waits once, with every temperature's responses
sharing the decode steps. Both sample the same tokens (checked here); their log-probs agree to float
rounding, since vLLM's results depend on the batch's shape (it is not batch-invariant). The tiny
checkpoint is built here, never downloaded; its random weights stop at EOS now and then, so lengths
vary up to ``--max-tokens`` as a real model's do up to a stage's limit.
"""

from __future__ import annotations

import argparse
import json

from bench.tiny_vllm import best_of, engine_and_prompts
from nemo_ext.generation import Completion, generate

# the candidate temperatures of the AceReason configs' probe (recipes/conf/rl/acereason_7b.yaml)
TEMPERATURES = (0.6, 0.7, 0.8, 0.85, 0.9, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="probe prompts")
    parser.add_argument("--group", type=int, default=8, help="responses per prompt and temperature")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm, prompts = engine_and_prompts(args.prompts, max_model_len=512)
    seeds = [1000 * i for i in range(len(prompts))]
    common = dict(n=args.group, top_p=1.0, max_tokens=args.max_tokens, logprobs=True, detokenize=False)

    def one_batch_per_temperature() -> list[list[Completion]]:
        return [row for t in TEMPERATURES for row in generate(llm, prompts, temperature=t, seed=seeds, **common)]

    def one_batch() -> list[list[Completion]]:
        return generate(llm, [p for _ in TEMPERATURES for p in prompts], seed=seeds * len(TEMPERATURES),
                        temperature=[t for t in TEMPERATURES for _ in prompts], **common)

    one_batch()  # warm-up
    best, samples = best_of({"one_batch_per_temperature": one_batch_per_temperature, "one_batch": one_batch},
                            args.repeats)
    pairs = [(a, b) for ra, rb in zip(samples["one_batch"], samples["one_batch_per_temperature"], strict=True)
             for a, b in zip(ra, rb, strict=True)]
    same_tokens = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    lengths = [len(a.token_ids) for a, _ in pairs]
    print(json.dumps({
        "responses": len(lengths), "temperatures": len(TEMPERATURES), "max_tokens": args.max_tokens,
        "mean_length": round(sum(lengths) / len(lengths), 1),
        "at_max_length": sum(n == args.max_tokens for n in lengths) / len(lengths),
        # float results depend on the batch's shape: log-probs differ in their last bits, and a response
        # could part ways where two tokens nearly tie
        "same_tokens_frac": len(same_tokens) / len(pairs),
        "max_logprob_gap_same_tokens": max((abs(x - y) for a, b in same_tokens
                                            for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0.0),
        **{f"{name}_s": round(s, 3) for name, s in best.items()},
        "speedup": round(best["one_batch_per_temperature"] / best["one_batch"], 3)}))


if __name__ == "__main__":
    main()
