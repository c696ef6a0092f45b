"""Cost of resumable generation: the evaluation runner's path (``iter_generate``: one request per sample
with its own seed, each finished sample appended to JSONL and fsynced) against vLLM's own batch call
(``LLM.generate`` with ``n`` samples per prompt), same prompts, seeds and engine, in one process.

    PYTHONPATH=. .venv/bin/python bench/eval_generation.py [--prompts 32] [--samples 4] [--max-tokens 128]

Both paths sample identical tokens (seed s + j for sample j, vLLM's rule; checked), so the ratio of
generated tokens per second is the whole cost of streaming to disk. The two alternate ``--repeats`` times
and the best of each is kept, wall-clock and process CPU time, since other jobs share small machines.
The tiny checkpoint is built here, never downloaded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.tiny_vllm import engine_and_prompts
from nemo_ext.evaluation.records import RecordWriter
from nemo_ext.generation import iter_generate


def timed(fn) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from vllm import SamplingParams

    tmp = Path(tempfile.mkdtemp())  # the generation records
    llm, prompts = engine_and_prompts(args.prompts, max_model_len=1024)
    seeds = [1000 * i for i in range(len(prompts))]
    sampling = {"temperature": 0.6, "top_p": 0.95, "max_tokens": args.max_tokens}

    def baseline() -> list:
        params = [SamplingParams(n=args.samples, seed=s, **sampling) for s in seeds]
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [c.token_ids for o in outs for c in o.outputs]

    def ours() -> list:
        done = {}
        with RecordWriter(tmp / "generations.jsonl") as writer:
            for i, j, c in iter_generate(llm, prompts, n=args.samples, seed=seeds, **sampling):
                writer.write([{"problem_id": str(i), "sample": j, "seed": c.seed, "text": c.text,
                               "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason}])
                done[i, j] = c.token_ids
        return [done[key] for key in sorted(done)]

    baseline()  # warm-up
    best = {"baseline": (float("inf"), float("inf")), "ours": (float("inf"), float("inf"))}
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("baseline", baseline)):
            wall, cpu, tokens[name] = timed(fn)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    assert [list(t) for t in tokens["ours"]] == [list(t) for t in tokens["baseline"]], "different samples"
    n_tokens = sum(len(t) for t in tokens["ours"])
    print(json.dumps({
        "requests": len(prompts) * args.samples, "generated_tokens": n_tokens,
        **{f"{k}_tokens_per_s_wall": round(n_tokens / v[0], 1) for k, v in best.items()},
        **{f"{k}_tokens_per_cpu_s": round(n_tokens / v[1], 1) for k, v in best.items()},
        "ratio_wall": round(best["baseline"][0] / best["ours"][0], 3),
        "ratio_cpu": round(best["baseline"][1] / best["ours"][1], 3),
    }))


if __name__ == "__main__":
    main()
