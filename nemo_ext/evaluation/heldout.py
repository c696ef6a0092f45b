"""Held-out accuracy during training (``eval`` of the SFT and RL configs): the one held-out evaluator.

It is the evaluation runner of ``eval/run_benchmarks.sh`` on a quick setting: the held-out set as a
benchmark entry (``HeldoutConfig.file``, rows ``{question, answer}`` read by ``nemo_ext.data.problems``,
or the synthetic task's test split), the same prompt template, vLLM generation (one sample, greedy by
default, no top-p), reward scoring and metrics, with the runner's files (``problems.jsonl``,
``generations.jsonl``, ``scores.jsonl``, ``metrics.json``) under ``<out_dir>/<name>/``, resumed sample
by sample like any evaluation. SFT calls it once on its export; RL before training and after each
stage on the rollout engine it already holds.
"""

from __future__ import annotations

from pathlib import Path

from nemo_ext.config.schema import HeldoutConfig
from nemo_ext.evaluation import runner
from nemo_ext.evaluation.config import EvalConfig
from nemo_ext.evaluation.loaders import load_problems
from nemo_ext.evaluation.registry import BenchmarkSpec, FieldsSpec, LoaderKind, SamplingSpec, SourceSpec, Task


def heldout_spec(cfg: HeldoutConfig) -> BenchmarkSpec:
    """The held-out set as a benchmark entry: one sample per problem at ``cfg.temperature``."""
    sampling = SamplingSpec(temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
    if cfg.file:
        return BenchmarkSpec(task=Task.math, title="held-out", loader=LoaderKind.rows, source=SourceSpec(path=cfg.file),
                             fields=FieldsSpec(id=None, question="question", answer="answer"), sampling=sampling)
    return BenchmarkSpec(task=Task.math, title="held-out", loader=LoaderKind.synthetic,
                         source=SourceSpec(num_problems=cfg.num_problems, seed=cfg.seed), sampling=sampling)


def heldout_problems(cfg: HeldoutConfig) -> list[dict]:
    """The first ``cfg.num_problems`` held-out problems (none when 0)."""
    if cfg.num_problems <= 0:
        return []
    return load_problems("held-out", heldout_spec(cfg))[:cfg.num_problems]


def evaluate_heldout(cfg: HeldoutConfig, checkpoint: str | Path, out_dir: Path, name: str, pool, llm=None) -> dict:
    """Accuracy of the model at ``checkpoint`` (a Hugging Face directory) on the held-out problems.

    name: this evaluation's directory under ``out_dir`` (one per model state: "sft", "init", a stage).
    pool: a ``nemo_ext.rewards.RewardPool``. llm: a vLLM engine already holding these weights (RL's
    rollout engine); None builds one from ``checkpoint``.
    Returns ``accuracy`` (the mean reward: 1 per accepted answer), ``response_length/mean`` (tokens)
    and ``problems``.
    """
    eval_cfg = EvalConfig(checkpoint=str(checkpoint), output_dir=str(out_dir), model_name=name,
                          limit=cfg.num_problems)
    runs = runner.prepare(eval_cfg, {name: heldout_spec(cfg)})
    runner.generate_missing(runs, eval_cfg, llm)
    runner.score_missing(runs, pool)
    metrics = runner.benchmark_metrics(runs[0], name)["metrics"]
    return {"accuracy": metrics["avg"]["mean"], "response_length/mean": metrics["mean_response_tokens"],
            "problems": metrics["num_problems"]}
