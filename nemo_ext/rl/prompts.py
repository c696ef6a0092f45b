"""RL prompts of a stage: the JSONL a stage's ``data`` names, or the embedded synthetic task.

One JSON object per line (the output of data_prep/rl_prompts.py), read by the project's one problem
reader (``nemo_ext.data.problems``):

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

from nemo_ext.config.rl import StageConfig, Task
from nemo_ext.data.problems import problem_prompt, read_problems, synthetic_problems
from nemo_ext.data.synthetic import rl_prompt_id

DEFAULT_SYNTHETIC_PROMPTS = 512


@dataclass(frozen=True)
class RLPrompt:
    id: str
    task: Task
    text: str  # the rendered prompt, up to and including the assistant turn's "<think>\n"
    reference: str | list  # math: the answer string; code: the test list

    @classmethod
    def of(cls, problem: dict) -> RLPrompt:
        """The prompt of a ``nemo_ext.data.problems`` problem."""
        task = Task(problem["task"])
        return cls(problem["id"], task, problem_prompt(problem),
                   problem["answer"] if task is Task.math else problem["tests"])


def load_stage_prompts(stage: StageConfig, seed: int) -> dict[str, RLPrompt]:
    """The stage's prompts by id, in file order (the synthetic task's train split if ``data`` is null)."""
    if stage.data is None:
        if stage.task is not Task.math:
            raise ValueError(f"stage {stage.name!r}: the synthetic task is math; set `data` for task code")
        problems = synthetic_problems(stage.num_prompts or DEFAULT_SYNTHETIC_PROMPTS, seed, "train", rl_prompt_id)
    else:
        problems = read_problems(stage.data, stage.task.value, limit=stage.num_prompts)
    return {p["id"]: RLPrompt.of(p) for p in problems}
