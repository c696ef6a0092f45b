"""The RL run's preflight: every stage's inputs opened and checked before any model is built.

``check_rl_inputs(cfg)`` (called by ``recipes/rl.py`` before it starts any rank) checks, and reports
together (``nemo_ext.preflight.PreflightError``, one line per problem naming the stage, the file and
the problem):

- the config's ranges (``validate_rl_config``, which raises on its own);
- ``policy.init``: a Hugging Face directory with ``config.json`` and weights (or ``tiny``), its
  tokenizer (``model.tokenizer`` when set) loadable, with a chat template that renders the
  project's prompt format;
- each stage's ``data``: the file exists, every line parses as a prompt of the stage's task (the
  parser of the run itself, ``load_stage_prompts``: ids unique, the stage's ``num_prompts`` first),
  the file is not empty, and for code every prompt's tests are ones the code reward accepts
  (``validate_tests``); a file of the other task's rows is named as such. Stages sharing a file and
  task are checked once and reported together;
- ``eval.file``, when held-out problems are read from one.

Left out: what needs the model or the GPUs (memory, vLLM's limits) and the checkpoint directory a
run resumes from (its own loader reports a bad one).
"""

from __future__ import annotations

import json
from collections import defaultdict

from nemo_ext.config.rl import RLConfig, StageConfig, Task, validate_rl_config
from nemo_ext.preflight import Checks, check_heldout_file, check_jsonl_file, check_model_and_tokenizer, without_prefix
from nemo_ext.rewards.code import validate_tests
from nemo_ext.rl.prompts import load_stage_prompts

BUILD_HINT = "write it with data_prep/rl_prompts.py --task {task}; docs/rl.md, \"RL prompts\""


def check_rl_inputs(cfg: RLConfig) -> None:
    """Raise ``PreflightError`` listing every problem with the run's inputs (module doc); ValueError for
    a config out of range."""
    validate_rl_config(cfg)
    checks = Checks()
    if cfg.policy.init != "tiny":
        check_model_and_tokenizer(cfg.policy.init, None, "policy.init", checks,
                                  hint="pass the SFT run's hf/ export (python recipes/sft.py writes runs/sft_tiny/hf)")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, stage in enumerate(cfg.stages):
        groups[stage.data, stage.task, stage.num_prompts].append(i)
    for indices in groups.values():
        stages = [cfg.stages[i] for i in indices]
        names = ", ".join(f"{s.name!r}" for s in stages)
        where = (f"stage {names}" if len(stages) == 1 else f"stages {names}") + \
            f" ({', '.join(f'stages[{i}].data' for i in indices)}, task {stages[0].task.value})"
        check_stage_data(stages[0], cfg.trainer.seed, where, checks)
    check_heldout_file(cfg.eval.file, cfg.eval.num_problems, "eval.file", checks)
    checks.raise_if_any("RL")


def check_stage_data(stage: StageConfig, seed: int, where: str, checks: Checks) -> None:
    """The problems of one stage's prompt file (``where`` names the stages reading it) go to ``checks``."""
    if stage.data is None:
        if stage.task is not Task.math:
            checks.add(where, "(data: null)", "the synthetic task is math; set `data` to a code prompt file")
        return
    if not check_jsonl_file(stage.data, where, checks, BUILD_HINT.format(task=stage.task.value)):
        return
    try:
        prompts = load_stage_prompts(stage, seed)
    except (ValueError, OSError) as e:
        problem = without_prefix(str(e), stage.data)
        other = _rows_of_other_task(stage)
        checks.add(where, stage.data, problem + (f" (its rows look like {other} prompts)" if other else ""))
        return
    if stage.task is Task.code:
        bad = []
        for prompt in prompts.values():
            try:
                validate_tests(prompt.reference)
            except ValueError as e:
                bad.append(f"prompt {prompt.id!r}: {e}")
        if bad:
            checks.add(where, stage.data, f"{len(bad)} prompt(s) with tests the code reward refuses, the first: "
                                          f"{bad[0]}")


def _rows_of_other_task(stage: StageConfig) -> str | None:
    """The other task's name when the file's first row is one of its prompts ('tests' vs 'answer')."""
    try:
        with open(stage.data, encoding="utf-8") as f:
            first = next((json.loads(line) for line in f if line.strip()), None)
    except (OSError, ValueError):
        return None
    if not isinstance(first, dict):
        return None
    task = "code" if "tests" in first else "math" if "answer" in first else None
    return task if task is not None and task != stage.task.value else None
