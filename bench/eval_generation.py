"""Cost of resumable generation: the evaluation runner's path (``iter_generate``, one request per sample
with its own seed, each finished sample appended to JSONL and fsynced) against vLLM's own batch call
(``LLM.generate`` with ``n`` samples per prompt), same prompts, seeds and engine, in one process.

    PYTHONPATH=. .venv/bin/python bench/eval_generation.py [--prompts 32] [--samples 4] [--max-tokens 128]

Both paths sample identical tokens (seed s + j for sample j, vLLM's rule), so the ratio of generated
tokens per second is the whole cost of streaming to disk. The tiny checkpoint is built, never downloaded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.synthetic import make_problems
from nemo_ext.evaluation.records import RecordWriter
from nemo_ext.generation import build_engine, iter_generate
from nemo_ext.models.tiny import build_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    from vllm import SamplingParams

    tmp = Path(tempfile.mkdtemp())
    llm = build_engine(str(build_tiny_checkpoint(tmp / "tiny")), seed=0, max_model_len=1024)
    prompts = [render_prompt(p["question"], "math") for p in make_problems(args.prompts, seed=1, split="test")]
    seeds = [1000 * i for i in range(len(prompts))]
    sampling = {"temperature": 0.6, "top_p": 0.95, "max_tokens": args.max_tokens}
    llm.generate(prompts[:2], SamplingParams(**sampling), use_tqdm=False)  # warm-up

    start = time.perf_counter()
    outs = llm.generate(prompts, [SamplingParams(n=args.samples, seed=s, **sampling) for s in seeds], use_tqdm=False)
    base_s = time.perf_counter() - start
    base_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)

    start = time.perf_counter()
    tokens = 0
    with RecordWriter(tmp / "generations.jsonl") as writer:
        for i, j, c in iter_generate(llm, prompts, n=args.samples, seed=seeds, **sampling):
            writer.write([{"problem_id": str(i), "sample": j, "seed": c.seed, "text": c.text,
                           "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason}])
            tokens += len(c.token_ids)
    ours_s = time.perf_counter() - start
    print(json.dumps({
        "requests": len(prompts) * args.samples, "tokens_baseline": base_tokens, "tokens_ours": tokens,
        "baseline_tokens_per_s": round(base_tokens / base_s, 1), "ours_tokens_per_s": round(tokens / ours_s, 1),
        "ratio_ours_over_baseline": round((tokens / ours_s) / (base_tokens / base_s), 3),
    }))


if __name__ == "__main__":
    main()
