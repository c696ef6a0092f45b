"""Reward throughput: math samples/s on long R1-style responses, and the code sandbox's overhead.

    PYTHONPATH=. .venv/bin/python bench/rewards.py [--problems 64] [--rollouts 16] [--workers 2] [--code | --overlap]

Math: a synthetic RL batch (problems x rollouts, ~8K-character responses with a think block holding
decoy boxes, half of the final answers right, written in varied equivalent forms, each problem's answer
distinct). Measured: our ``score_math`` one sample after another in this process (the sequential
baseline), the same batch through ``RewardPool``, and plain math-verify on the whole response (what a
naive grader does); samples/s of wall time and per CPU-second used (robust to a shared machine).
Code: wall time of ``score_code`` on a sample against plain ``subprocess.run([python, file])`` of the
same program and input (one run per test), min and median over repeats; the overhead is the
difference. Targets (issue 3): math >= 200 samples/s per core; sandbox overhead <= 50 ms per sample.
Overlap (``--overlap``): code samples whose test takes 0.3 s arrive one every 0.15 s, as generation
finishes them; wall time from the first arrival to the last verdict when the batch is scored after
the last arrival (baseline) and when each sample goes to a ``RewardPool.session`` on arrival.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from math_verify import parse, verify  # noqa: E402

from nemo_ext.rewards import RewardPool, score_code, score_math  # noqa: E402
from nemo_ext.rewards import math as math_reward  # noqa: E402

# k -> (gold answer, equivalent forms a model may box, wrong answers); k makes each problem's answer distinct
ANSWERS = [
    lambda k: (f"{k}", [f"{k}", f"0{k}", f"{k}.0"], [f"{k + 1}", f"{k // 2}"]),
    lambda k: (f"\\frac{{{k}}}{{{k + 1}}}",
               [f"\\frac{k}{{{k + 1}}}", f"\\dfrac{{{k}}}{{{k + 1}}}", f"{k}/{k + 1}"],
               [f"\\frac{{{k + 1}}}{{{k}}}", f"{k / (k + 1):.2f}"]),
    lambda k: (f"{k}\\sqrt{{3}}", [f"{k}\\sqrt3", f"\\sqrt{{{3 * k * k}}}"],
               [f"{k}\\sqrt{{2}}", f"\\sqrt{{{k}}}"]),
    lambda k: (f"[1, {k})", [f"[1,{k})"], [f"(1,{k}]", f"[1,{k}]"]),
    lambda k: (f"\\{{1, 2, {k}\\}}", [f"\\{{{k},2,1\\}}", f"1, 2, {k}"], [f"\\{{1, {k}\\}}"]),
    lambda k: (f"({k}, -1)", [f"({k},-1)"], [f"(-1, {k})"]),
    lambda k: (f"{k}\\%", [f"{k}", f"{k}\\%"], [f"{k / 100}", f"{100 - k}\\%"]),
    lambda k: (f"x^2 + {2 * k}x + {k * k}", [f"(x+{k})^2"], [f"(x-{k})^2"]),
    lambda k: (f"\\frac{{\\pi}}{{{k}}}", [f"\\pi/{k}"], [f"\\frac{{\\pi}}{{{k + 1}}}"]),
]
FILLER = ("Let me consider the expression again. If we substitute $x = {k}$ we get ${k}^2 + {k} = {kk}$, "
          "which does not match, so maybe \\boxed{{{k}}} is wrong. Wait, check the case $n = {k}$ again. ")


def synthesize(problems: int, rollouts: int, chars: int = 8000, seed: int = 0) -> tuple[list[str], list[str]]:
    """Responses (~``chars`` long, R1-style) and their gold answers, ``rollouts`` per problem."""
    rng = random.Random(seed)
    responses, golds = [], []
    for p in range(problems):
        gold, right, wrong = ANSWERS[p % len(ANSWERS)](p + 3)
        for _ in range(rollouts):
            think = []
            while sum(map(len, think)) < chars - 300:
                k = rng.randint(2, 999)
                think.append(FILLER.format(k=k, kk=k * k + k))
            boxed = rng.choice(right if rng.random() < 0.5 else wrong)
            responses.append("<think>\n" + "".join(think) + "\n</think>\n\nSumming up the cases above, the "
                             f"answer is\n\n$$\\boxed{{{boxed}}}$$")
            golds.append(gold)
    return responses, golds


def clear_caches() -> None:
    math_reward.equivalent.cache_clear()
    math_reward._parse.cache_clear()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by live processes ``pids`` (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat(5))
    return total / os.sysconf("SC_CLK_TCK")


def bench_math(problems: int, rollouts: int, workers: int) -> None:
    responses, golds = synthesize(problems, rollouts)
    n = len(responses)
    print(f"math: {n} responses ({problems} problems x {rollouts}), mean "
          f"{statistics.mean(map(len, responses)):.0f} chars; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; per-core rate = samples / CPU-seconds used")
    clear_caches()
    start, cpu = time.perf_counter(), time.process_time()
    sequential = [score_math(r, g) for r, g in zip(responses, golds, strict=True)]
    seq_s, seq_cpu = time.perf_counter() - start, time.process_time() - cpu
    accuracy = statistics.mean(v.reward for v in sequential)
    print(f"  sequential score_math            {n / seq_s:8.1f} samples/s   {n / seq_cpu:8.1f} per core   "
          f"mean reward {accuracy:.3f}")

    with RewardPool(workers=workers) as pool:
        pool.score("math", responses[:workers], golds[:workers])  # workers warm (imports done)
        start, cpu = time.perf_counter(), cpu_seconds(pool.pids) + time.process_time()
        pooled = pool.score("math", responses, golds)
        pool_s, pool_cpu = time.perf_counter() - start, cpu_seconds(pool.pids) + time.process_time() - cpu
    assert [v.verdict for v in pooled] == [v.verdict for v in sequential], "pool and sequential disagree"
    print(f"  RewardPool({workers} workers)            {n / pool_s:8.1f} samples/s   {n / pool_cpu:8.1f} "
          f"per core   x{seq_s / pool_s:.2f} wall vs sequential (parent's CPU included)")

    subset = max(32, n // 8)  # plain math-verify is slow: time a slice
    start, cpu = time.perf_counter(), time.process_time()
    for r, g in zip(responses[:subset], golds[:subset], strict=True):
        verify(parse(g), parse(r))
    naive_s, naive_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"  plain math-verify on full text   {subset / naive_s:8.1f} samples/s   {subset / naive_cpu:8.1f} "
          f"per core   (first {subset} samples)")


def wall_costs(fn, repeats: int) -> tuple[float, float]:
    """(min, median) wall seconds of ``fn()`` over ``repeats`` runs. On a shared machine the median
    includes waiting for a core; the min is the closest to the cost on an idle one (as timeit)."""
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return min(walls), statistics.median(walls)


def run_plain(path: str, stdin: str) -> None:
    subprocess.run([sys.executable, path], input=stdin, text=True, capture_output=True, check=True)


def bench_code(repeats: int) -> None:
    busy = "import time\nt = time.time()\nwhile time.time() - t < 0.2: pass\n"
    program = "a, b = map(int, input().split())\nprint(a + b)"
    cases = [("a+b (trivial)", program, 1), ("0.2 s of work", busy + program, 1),
             ("a+b (trivial)", program, 10)]
    print(f"code: wall ms over {repeats} runs, min / median; overhead = sandboxed score_code - plain "
          "subprocess.run (one run per test)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, n_tests in cases:
            path = os.path.join(tmp, "solution.py")
            Path(path).write_text(source)
            tests = [{"input": "3 4\n", "output": "7", "testtype": "stdin"}] * n_tests
            response = f"<think>\nok\n</think>\n```python\n{source}\n```"
            assert score_code(response, tests).verdict == "accepted"
            plain = wall_costs(lambda p=path, k=n_tests: [run_plain(p, "3 4\n") for _ in range(k)], repeats)
            boxed = wall_costs(lambda r=response, t=tests: score_code(r, t), repeats)
            print(f"  {name:14} {n_tests:2d} test(s): plain {plain[0] * 1e3:6.1f} / {plain[1] * 1e3:6.1f}   "
                  f"sandbox {boxed[0] * 1e3:6.1f} / {boxed[1] * 1e3:6.1f}   overhead "
                  f"{(boxed[0] - plain[0]) * 1e3:+6.1f} / {(boxed[1] - plain[1]) * 1e3:+6.1f}")


def bench_overlap(workers: int, samples: int = 24, gap_s: float = 0.15) -> None:
    source = "import time\ntime.sleep(0.3)\na, b = map(int, input().split())\nprint(a + b)"
    response = f"<think>\nok\n</think>\n```python\n{source}\n```"
    tests = [{"input": "3 4\n", "output": "7", "testtype": "stdin"}]
    with RewardPool(workers) as pool:
        pool.score("code", [response] * workers, [tests] * workers)  # started and warm
        start = time.perf_counter()
        for _ in range(samples):  # generation: a sample every gap_s, then the batch
            time.sleep(gap_s)
        batch = pool.score("code", [response] * samples, [tests] * samples)
        batch_s = time.perf_counter() - start
        start = time.perf_counter()
        with pool.session("code") as session:
            for _ in range(samples):
                deadline = time.perf_counter() + gap_s
                while time.perf_counter() < deadline:  # the engine's steps, with polls between them
                    session.poll()
                    time.sleep(0.005)
                session.add(response, tests)
            streamed = session.results()
        streamed_s = time.perf_counter() - start
    assert all(v.verdict == "accepted" for v in batch + streamed)
    print(f"overlap: {samples} code samples (0.3 s test) arriving every {gap_s} s, {workers} workers: "
          f"scored after the last arrival {batch_s:.2f} s, scored on arrival {streamed_s:.2f} s "
          f"({batch_s / streamed_s:.2f}x); arrivals alone {samples * gap_s:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=30)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--code", action="store_true", help="only the code sandbox's overhead")
    only.add_argument("--overlap", action="store_true", help="only the scoring-overlap measurement")
    args = parser.parse_args()
    if args.code or args.overlap:
        bench_code(args.repeats) if args.code else bench_overlap(args.workers)
        return
    bench_math(args.problems, args.rollouts, args.workers)
    bench_code(args.repeats)
    bench_overlap(args.workers)


if __name__ == "__main__":
    main()
