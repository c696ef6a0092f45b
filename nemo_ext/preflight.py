"""Checks of a run's inputs before anything is built: what the SFT, RL and evaluation preflights share.

A preflight opens every input a run will read (data files, the model's directory, its tokenizer) and
collects each problem as ``<where>: <file>: <problem>``, where ``where`` names the config key or the
stage that points at the file. All problems are reported at once in one ``PreflightError``, in
seconds, before a process group, a model or an engine exists. The run-specific checks live beside
their runs: ``nemo_ext/rl/preflight.py``, ``nemo_ext/sft/preflight.py``,
``nemo_ext/evaluation/preflight.py``.

Shared here: a Hugging Face checkpoint directory (``config.json`` that parses, weight files, the
shards its index names) and its tokenizer, whose chat template must render the project's prompt
format (``nemo_ext.data.prompts``): the prompts are rendered by the project, in Qwen's chat format,
so a model whose template differs was trained on another format.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nemo_ext.data.prompts import IM_END, IM_START, SYSTEM_PROMPT, THINK_OPEN, render_prompt, user_message

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
PROBE_QUESTION = "What is 1 + 1?"  # rendered by the chat template and by render_prompt, compared


@dataclass(frozen=True)
class Problem:
    """One bad input: ``where`` (a config key or stage), ``file`` (the path looked at), ``problem``."""

    where: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.file}: {self.problem}"


class PreflightError(ValueError):
    """The problems a preflight found, one a line."""

    def __init__(self, run: str, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{run} preflight: {len(self.problems)} problem(s) with the run's inputs; nothing was "
                         f"built:\n{lines}")


@dataclass
class Checks:
    """The problems found so far."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, file: str | Path, problem: str) -> None:
        self.problems.append(Problem(where, str(file), problem))

    @contextlib.contextmanager
    def catch(self, where: str, file: str | Path) -> Iterator[None]:
        """Record a ValueError / OSError / KeyError raised inside as a problem of ``file``."""
        try:
            yield
        except (ValueError, OSError, KeyError) as e:
            self.add(where, file, without_prefix(_message(e), str(file)))

    def raise_if_any(self, run: str) -> None:
        if self.problems:
            raise PreflightError(run, self.problems)


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text) or type(e).__name__


def without_prefix(message: str, file: str) -> str:
    """``message`` without its leading ``<file>: `` (the problem line names the file already); a leading
    ``<file>:<line>: `` becomes ``line <line>: `` and ``<file> row <i>: `` becomes ``row <i>: ``."""
    if message.startswith((f"{file}: ", f"{file} row ")):
        return message[len(file) + 1:].removeprefix(" ")
    line, sep, rest = message[len(file) + 1:].partition(": ") if message.startswith(f"{file}:") else ("", "", "")
    return f"line {line}: {rest}" if sep and line.isdigit() else message


def check_hf_checkpoint(path: str | Path, where: str, checks: Checks, hint: str = "") -> dict | None:
    """A Hugging Face model directory: ``config.json`` (returned, parsed) and its weights; problems
    go to ``checks`` (``hint``, if given, is appended to a missing directory's)."""
    path = Path(path)
    hint = f"; {hint}" if hint else ""
    if not path.is_dir():
        checks.add(where, path, ("is not a directory" if path.exists() else "no such directory") + hint)
        return None
    config_file = path / "config.json"
    if not config_file.exists():
        checks.add(where, path, f"not a Hugging Face directory (no config.json){hint}")
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        checks.add(where, config_file, f"does not parse as JSON ({e})")
        return None
    if not isinstance(config, dict) or "model_type" not in config:
        checks.add(where, config_file, "has no 'model_type': not a transformers model config")
        return None
    _check_weights(path, where, checks)
    return config


def _check_weights(path: Path, where: str, checks: Checks) -> None:
    for name in WEIGHT_INDEXES:
        if (path / name).exists():
            try:
                shards = set(json.loads((path / name).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError) as e:
                checks.add(where, path / name, f"is not a weight index ({_message(e)})")
                return
            missing = sorted(s for s in shards if not (path / s).exists())
            if missing:
                checks.add(where, path / name, f"names weight files that are missing: {', '.join(missing[:5])}")
            return
    if not any((path / name).exists() for name in WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        checks.add(where, path, f"holds no weights ({' / '.join(WEIGHT_FILES + WEIGHT_INDEXES)})")


def load_tokenizer(path: str | Path, where: str, checks: Checks):
    """The tokenizer at ``path`` (a directory or hub name), or None with the problem recorded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - any failure to load is the problem to report
        checks.add(where, path, f"cannot load its tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None


def check_chat_template(tokenizer, path: str | Path, where: str, checks: Checks) -> None:
    """The tokenizer has a chat template, its chat markers are single tokens, and the template renders a
    probe conversation exactly as ``render_prompt`` does (up to the ``<think>`` line the project adds)."""
    if not getattr(tokenizer, "chat_template", None):
        checks.add(where, path, "its tokenizer has no chat template (tokenizer_config.json 'chat_template'); the "
                                "project renders prompts in Qwen's chat format, the model must know it")
        return
    for marker in (IM_START, IM_END):
        if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) != 1:
            checks.add(where, path, f"its tokenizer splits the chat marker {marker} into several tokens")
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message(PROBE_QUESTION, "math")}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template that does not render is the problem
        checks.add(where, path, f"its chat template does not render a system + user turn ({type(e).__name__}: {e})")
        return
    expected = render_prompt(PROBE_QUESTION, "math")
    if expected not in (rendered, rendered + f"{THINK_OPEN}\n"):
        checks.add(where, path, f"its chat template renders {rendered!r:.160}, not the project's prompt format "
                                f"{expected!r:.160} (nemo_ext/data/prompts.py)")


def check_model_and_tokenizer(model: str | Path, tokenizer: str | Path | None, where: str, checks: Checks,
                              chat_template: bool = True, hint: str = "") -> dict | None:
    """A checkpoint directory and its tokenizer (``tokenizer``: another path, or None for the model's);
    returns the parsed config.json (None when it could not be read)."""
    config = check_hf_checkpoint(model, where, checks, hint)
    if config is None:
        return None
    tokenizer_path = tokenizer or model
    tok = load_tokenizer(tokenizer_path, "model.tokenizer" if tokenizer else where, checks)
    if tok is not None and chat_template:
        check_chat_template(tok, tokenizer_path, "model.tokenizer" if tokenizer else where, checks)
    return config


def check_heldout_file(path: str | None, limit: int, where: str, checks: Checks) -> None:
    """The held-out ``{question, answer}`` JSONL a run scores at its end (when ``path`` and ``limit`` > 0)."""
    from nemo_ext.data.problems import read_problems

    if limit <= 0 or not path or not check_jsonl_file(path, where, checks, "held-out {question, answer} JSONL"):
        return
    with checks.catch(where, path):
        read_problems(path, "math", limit=limit)  # the held-out evaluator's reader; raises on no problems


def check_jsonl_file(path: str | Path, where: str, checks: Checks, what: str) -> bool:
    """``path`` exists and is a file (``what`` says what it should hold, for the message)."""
    path = Path(path)
    if not path.exists():
        checks.add(where, path, f"no such file ({what})")
        return False
    if not path.is_file():
        checks.add(where, path, f"is not a file ({what})")
        return False
    return True
