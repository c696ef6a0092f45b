"""The evaluation's preflight: the benchmarks named on the command line and the checkpoint, checked
before any problem is decoded or any engine is built.

``check_eval_inputs`` (called by ``nemo_ext.evaluation.cli`` for ``generate`` and ``score``) reports
together (``nemo_ext.preflight.PreflightError``, one line per problem naming the benchmark or key,
the file and the problem):

- every named benchmark is in the registry (else the registry's names are listed);
- a benchmark read from a local ``source.path`` loads: the file exists, its rows parse with the
  entry's columns and task, and it holds problems (the run's own loader, ``load_problems``); a hub
  source is loaded by the run, before the model; a resumed benchmark reads its ``problems.jsonl``
  and is not checked again;
- ``generate`` only: the checkpoint is a Hugging Face directory with weights and a tokenizer whose
  chat template renders the project's prompt format.
"""

from __future__ import annotations

from pathlib import Path

from nemo_ext.evaluation.config import EvalConfig, resolve_benchmarks
from nemo_ext.evaluation.loaders import load_problems
from nemo_ext.evaluation.registry import BenchmarkSpec, load_registry
from nemo_ext.preflight import Checks, check_model_and_tokenizer


def check_eval_inputs(cfg: EvalConfig, registry_overrides: list[str], model: bool) -> dict[str, BenchmarkSpec]:
    """The selected registry entries (``resolve_benchmarks``), once every input checked (module doc)
    is fine; else ``PreflightError``. ``model``: check the checkpoint too."""
    checks = Checks()
    registry = load_registry(cfg.benchmarks_file, registry_overrides)
    for name in (n for n in cfg.benchmarks if n not in registry.benchmarks):
        checks.add(f"benchmark {name!r}", cfg.benchmarks_file,
                   f"unknown benchmark; the registry has: {', '.join(sorted(registry.benchmarks))}")
    specs = {} if checks.problems else resolve_benchmarks(cfg, registry_overrides)
    for name, spec in specs.items():
        if spec.source.path and not (Path(cfg.output_dir) / name / "problems.jsonl").exists():
            with checks.catch(f"benchmark {name!r} (source.path)", spec.source.path):
                load_problems(name, spec)
    if model:
        check_model_and_tokenizer(cfg.checkpoint, None, "checkpoint", checks)
    checks.raise_if_any("evaluation")
    return specs
