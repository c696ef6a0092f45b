"""The evaluation run: problems -> generations -> scores -> metrics, resumable at every stage.

Per benchmark, under ``<output_dir>/<benchmark>/``:

- ``problems.jsonl``: the problems as loaded and decoded (LiveCodeBench tests decoded once, kept as
  JSON); later stages and resumed runs read this file, never the source again.
- ``settings.json``: what the samples depend on (checkpoint, source, template, sampling, seed).
  Resuming with different settings is an error: samples of two settings are never mixed.
- ``generations.jsonl``: append-only, one line per sample, written (and fsynced) the moment vLLM
  finishes it: ``problem_id``, ``sample``, ``seed``, ``text``, ``num_tokens``, ``finish_reason``,
  ``truncated``. A resumed run generates only the (problem, sample) pairs missing from it.
- ``scores.jsonl``: append-only, one line per scored sample (``reward``, ``verdict``, ``extracted``
  for math, ``seconds``), from ``nemo_ext.rewards.RewardPool``; resumed the same way.
- ``metrics.json``: the benchmark's metrics (``nemo_ext.evaluation.metrics.summarize``) and per-problem
  results, written atomically.

Sample j of problem p has seed ``hash(seed, benchmark, p) + j`` (vLLM's rule for the children of one
request), so it does not depend on which other samples were generated in the same call.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from nemo_ext.evaluation import metrics, registry
from nemo_ext.evaluation.config import EvalConfig
from nemo_ext.evaluation.loaders import load_problems, read_local
from nemo_ext.evaluation.records import RecordWriter, read_records
from nemo_ext.evaluation.registry import BenchmarkSpec
from nemo_ext.io import atomic_write_json, atomic_write_text

SCORE_CHUNK = 256  # samples per RewardPool call: the unit of progress saved to scores.jsonl


@dataclass
class BenchmarkRun:
    """One benchmark of one run: its spec (overrides applied), directory and problems."""

    name: str
    spec: BenchmarkSpec
    dir: Path
    problems: list[dict]

    @property
    def expected(self) -> list[tuple[str, int]]:
        """Every (problem_id, sample) the run must produce, in order."""
        return [(p["id"], j) for p in self.problems for j in range(self.spec.samples)]


def sample_seed(base: int, benchmark: str, problem_id: str, sample: int) -> int:
    """The seed of one sample: a 28-bit hash of (base, benchmark, problem) plus the sample index."""
    digest = hashlib.sha256(f"{base}/{benchmark}/{problem_id}".encode()).hexdigest()
    return int(digest[:7], 16) + sample


def _settings(cfg: EvalConfig, spec: BenchmarkSpec) -> dict:
    return {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "source": asdict(spec.source),
        "fields": asdict(spec.fields),
        "contest_dates": asdict(spec.contest_dates),
        "tests": spec.tests.value,
        "template": spec.template,
        "sampling": asdict(spec.sampling),
        "seed": cfg.seed,
    }


def prepare(cfg: EvalConfig, specs: dict[str, BenchmarkSpec]) -> list[BenchmarkRun]:
    """Load (or reload from the run directory) every benchmark's problems; check resumed settings.

    Settings bind once ``problems.jsonl`` exists (samples can exist only after it): until then a failed
    attempt, say an unreachable hub, may be retried with other settings in the same directory.
    """
    runs = []
    for name, spec in specs.items():
        bench_dir = Path(cfg.output_dir) / name
        settings = json.loads(json.dumps(_settings(cfg, spec)))  # enums and tuples as JSON has them
        settings_file, problems_file = bench_dir / "settings.json", bench_dir / "problems.jsonl"
        if problems_file.exists() and settings_file.exists():
            old = json.loads(settings_file.read_text())
            changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
            if changed:
                raise ValueError(f"{settings_file}: this run directory holds samples made with other "
                                 f"settings ({', '.join(changed)} differ); use another output_dir=...")
        if problems_file.exists():
            problems = read_local(problems_file)
        else:
            problems = load_problems(name, spec)
        # Settings before problems: a kill in between leaves no problems.jsonl, so nothing is bound yet.
        atomic_write_json(settings_file, settings)
        if not problems_file.exists():
            atomic_write_text(problems_file, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems))
        runs.append(BenchmarkRun(name, spec, bench_dir, problems[: cfg.limit] if cfg.limit else problems))
    return runs


def build_engine_for(cfg: EvalConfig):
    from nemo_ext.generation import build_engine

    return build_engine(cfg.checkpoint, tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed,
                        max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization)


def _progress(total: int, done: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=done, desc=desc, unit="sample", dynamic_ncols=True)


def _missing(run: BenchmarkRun, records: dict) -> list[tuple[str, int]]:
    return [key for key in run.expected if key not in records]


def generate_missing(runs: list[BenchmarkRun], cfg: EvalConfig, llm=None) -> int:
    """Generate every sample missing from the runs' ``generations.jsonl``; returns how many.

    llm: a vLLM engine to reuse; None builds one from ``cfg`` if (and only if) anything is missing.
    """
    from nemo_ext.generation import iter_generate

    generated = 0
    for run in runs:
        path = run.dir / "generations.jsonl"
        todo = _missing(run, read_records(path))
        if not todo:
            continue
        llm = llm or build_engine_for(cfg)
        by_id = {p["id"]: p for p in run.problems}
        prompts = [registry.render(run.spec.template, by_id[pid]) for pid, _ in todo]
        seeds = [sample_seed(cfg.seed, run.name, pid, j) for pid, j in todo]
        s = run.spec.sampling
        samples = iter_generate(llm, prompts, n=1, temperature=s.temperature, top_p=s.top_p,
                                max_tokens=s.max_new_tokens, seed=seeds)
        total = len(run.expected)
        with RecordWriter(path) as writer, _progress(total, total - len(todo), f"generate {run.name}") as bar:
            for i, _, c in samples:
                pid, j = todo[i]
                writer.write([{"problem_id": pid, "sample": j, "seed": c.seed, "text": c.text,
                               "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                               "truncated": c.truncated}])
                bar.update()
                generated += 1
    return generated


def reference_of(problem: dict):
    """What the reward scores against: the answer (math), or the tests with ``fn_name`` on functional
    ones (code, the format of ``nemo_ext.rewards.code``)."""
    if problem["task"] == "math":
        return problem["answer"]
    fn_name = problem["func_name"]
    return [dict(t, fn_name=fn_name) if t["testtype"] == "functional" else t for t in problem["tests"]]


def score_missing(runs: list[BenchmarkRun], pool) -> int:
    """Score every generated sample missing from the runs' ``scores.jsonl``; returns how many.

    pool: a ``nemo_ext.rewards.RewardPool``. Fails if a sample was never generated.
    """
    scored = 0
    for run in runs:
        gens = read_records(run.dir / "generations.jsonl")
        absent = _missing(run, gens)
        if absent:
            raise RuntimeError(f"{run.dir}/generations.jsonl lacks {len(absent)} samples (first: problem "
                               f"{absent[0][0]!r} sample {absent[0][1]}): generate first")
        path = run.dir / "scores.jsonl"
        todo = _missing(run, read_records(path))
        by_id = {p["id"]: p for p in run.problems}
        task = run.spec.task.value
        total = len(run.expected)
        with RecordWriter(path) as writer, _progress(total, total - len(todo), f"score {run.name}") as bar:
            for start in range(0, len(todo), SCORE_CHUNK):
                chunk = todo[start: start + SCORE_CHUNK]
                verdicts = pool.score(task, [gens[key]["text"] for key in chunk],
                                      [reference_of(by_id[pid]) for pid, _ in chunk])
                writer.write([{"problem_id": pid, "sample": j, "reward": v.reward, "verdict": v.verdict,
                               "extracted": v.extracted if task == "math" else None, "seconds": v.seconds}
                              for (pid, j), v in zip(chunk, verdicts, strict=True)])
                bar.update(len(chunk))
                scored += len(chunk)
    return scored


def _problem_result(problem_id: str, gens: list[dict], scores: list[dict], is_math: bool) -> dict:
    """Per-problem results from its k generation and score records (in sample order)."""
    k = len(scores)
    rewards = [s["reward"] for s in scores]
    result = {"id": problem_id, "num_correct": sum(r >= 1.0 for r in rewards),
              "mean_reward": sum(rewards) / k, "rewards": rewards,
              "verdicts": dict(Counter(s["verdict"] for s in scores)),
              "mean_response_tokens": sum(g["num_tokens"] for g in gens) / k,
              "truncated": sum(bool(g["truncated"]) for g in gens)}
    if is_math:
        result["majority_answer"], result["majority_score"] = metrics.majority_vote(
            [s["extracted"] for s in scores], rewards)
    return result


def benchmark_metrics(run: BenchmarkRun, model_name: str) -> dict:
    """The metrics JSON of one fully scored benchmark (also written to ``<dir>/metrics.json``)."""
    gens, scores = read_records(run.dir / "generations.jsonl"), read_records(run.dir / "scores.jsonl")
    absent = _missing(run, scores)
    if absent:
        raise RuntimeError(f"{run.dir}/scores.jsonl lacks problem {absent[0][0]!r} sample {absent[0][1]}: "
                           f"score first")
    is_math = run.spec.task.value == "math"
    k = run.spec.samples
    g = [[gens[(p["id"], j)] for j in range(k)] for p in run.problems]
    s = [[scores[(p["id"], j)] for j in range(k)] for p in run.problems]
    summary = metrics.summarize(
        [[r["reward"] for r in row] for row in s],
        [[r["num_tokens"] for r in row] for row in g],
        [[r["truncated"] for r in row] for row in g],
        [[r["extracted"] for r in row] for row in s] if is_math else None,
    )
    per_problem = [_problem_result(p["id"], g_row, s_row, is_math)
                   for p, g_row, s_row in zip(run.problems, g, s, strict=True)]
    summary["verdicts"] = dict(Counter(r["verdict"] for row in s for r in row))
    out = {"benchmark": run.name, "title": run.spec.title, "task": run.spec.task.value, "model": model_name,
           "sampling": asdict(run.spec.sampling), "metrics": summary, "problems": per_problem}
    atomic_write_json(run.dir / "metrics.json", out)
    return out
