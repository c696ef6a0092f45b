"""RL prompts of a stage: the JSONL a stage's ``data`` names, or the embedded synthetic task.

One JSON object per line (the output of data_prep/rl_prompts.py):

- math: ``{"id": str, "question": str, "answer": str}`` (AceReason-Math's problem and answer);
- code: ``{"id": str, "question": str, "tests": [{"input", "output", "testtype"}...],
  "starter_code": str (optional)}``.

``id`` is optional (default: the line number) but must be unique; it keys the pass-rate statistics
that the prompt filter carries across epochs and stages. A bad line is an error that names the
file, the line and the key. Prompts are rendered once here with the paper's format
(``nemo_ext.data.prompts``), so rollouts, training and evaluation see identical text.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_ext.config.rl import RLEvalConfig, StageConfig, Task
from nemo_ext.data.prompts import render_prompt
from nemo_ext.data.sources import jsonl_objects
from nemo_ext.data.synthetic import make_problems, rl_prompt_id
from nemo_ext.sft.data import read_eval_problems

DEFAULT_SYNTHETIC_PROMPTS = 512


@dataclass(frozen=True)
class RLPrompt:
    id: str
    task: Task
    text: str  # the rendered prompt, up to and including the assistant turn's "<think>\n"
    reference: str | list  # math: the answer string; code: the test list


def load_stage_prompts(stage: StageConfig, seed: int) -> dict[str, RLPrompt]:
    """The stage's prompts by id, in file order (the synthetic task's train split if ``data`` is null)."""
    if stage.data is None:
        if stage.task is not Task.math:
            raise ValueError(f"stage {stage.name!r}: the synthetic task is math; set `data` for task code")
        problems = make_problems(stage.num_prompts or DEFAULT_SYNTHETIC_PROMPTS, seed=seed, split="train")
        return {rl_prompt_id(i): RLPrompt(rl_prompt_id(i), Task.math, render_prompt(p["question"], "math"),
                                          p["answer"]) for i, p in enumerate(problems)}
    prompts: dict[str, RLPrompt] = {}
    for where, row in jsonl_objects(stage.data):
        prompt = _prompt(row, stage.task, where, default_id=where.rsplit(":", 1)[1])
        if prompt.id in prompts:
            raise ValueError(f"{where}: duplicate id {prompt.id!r}")
        prompts[prompt.id] = prompt
        if stage.num_prompts is not None and len(prompts) == stage.num_prompts:
            break
    if not prompts:
        raise ValueError(f"{stage.data}: no prompts")
    return prompts


def load_eval_problems(cfg: RLEvalConfig) -> list[dict]:
    """Held-out ``{question, answer}`` math problems: ``cfg.file``, or the synthetic test split."""
    if cfg.num_problems <= 0:
        return []
    if cfg.file:
        return read_eval_problems(cfg.file, cfg.num_problems)
    return make_problems(cfg.num_problems, seed=cfg.seed, split="test")


def _prompt(row: dict, task: Task, where: str, default_id: str) -> RLPrompt:
    question = _field(row, "question", str, where)
    if task is Task.math:
        reference = str(_field(row, "answer", (str, int), where))
        text = render_prompt(question, "math")
    else:
        reference = _field(row, "tests", list, where)
        if not reference:
            raise ValueError(f"{where}: key 'tests' is empty; a code prompt needs at least one test")
        starter = row.get("starter_code") or ""
        if not isinstance(starter, str):
            raise ValueError(f"{where}: key 'starter_code' must be a string, got {type(starter).__name__}")
        text = render_prompt(question, "code", starter)
    return RLPrompt(str(row.get("id", default_id)), task, text, reference)


def _field(row: dict, key: str, kind, where: str):
    if key not in row:
        raise ValueError(f"{where}: missing key {key!r} (keys: {sorted(row)})")
    if not isinstance(row[key], kind):
        raise ValueError(f"{where}: key {key!r} has type {type(row[key]).__name__}, expected {kind}")
    return row[key]
