"""The paper's prompt format (AceReason-Nemotron 1.1, ../shared/PAPER.md, "math prompt (1.1)" and
"code prompt (1.1)" rows), rendered in Qwen's chat format.

One place renders prompts for SFT, RL rollouts and evaluation, so the three always agree. The
assistant turn opens with ``<think>\\n``: the model continues inside its reasoning block.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful and harmless assistant. You should think step-by-step."
MATH_INSTRUCTION = "Please place your final answer inside \\boxed{}."
CODE_FORMAT = "```python\n# Your solution code here\n```"
CODE_INSTRUCTION = (
    "Write Python code to solve the problem. Please place the solution code in the following format:\n"
    + CODE_FORMAT
)
CODE_STARTER_INSTRUCTION = (
    "Solve the problem starting with the provided function header.\n\nFunction header:\n```\n{starter}\n```"
    "\n\nPlease place the solution code in the following format:\n" + CODE_FORMAT
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EOS_TOKEN = IM_END
SPECIAL_TOKENS = (IM_START, IM_END, "<|endoftext|>", THINK_OPEN, THINK_CLOSE)


def user_message(question: str, task: str, starter_code: str = "") -> str:
    """The user turn for a math or code question, with the paper's instruction appended.

    As the AceReason evaluation toolkit builds it: the question stripped, a non-empty starter code
    inserted exactly as given (LiveCodeBench's end in a newline and the body's indentation, which
    stay), so prompts match the toolkit's byte for byte (tests/test_prompts.py).
    """
    question = question.strip()
    if task == "math":
        return f"{question}\n\n{MATH_INSTRUCTION}"
    if task == "code":
        if starter_code:
            return f"{question}\n\n{CODE_STARTER_INSTRUCTION.format(starter=starter_code)}"
        return f"{question}\n\n{CODE_INSTRUCTION}"
    raise ValueError(f"task must be 'math' or 'code', got {task!r}")


def render_prompt(question: str, task: str, starter_code: str = "", system: str = SYSTEM_PROMPT) -> str:
    """Full prompt text up to and including the opening ``<think>\\n`` of the assistant turn."""
    return (
        f"{IM_START}system\n{system}{IM_END}\n"
        f"{IM_START}user\n{user_message(question, task, starter_code)}{IM_END}\n"
        f"{IM_START}assistant\n{THINK_OPEN}\n"
    )


def render_response(output: str) -> str:
    """The assistant text a model is trained on, given a teacher output.

    Teacher outputs (DeepSeek-R1 traces, ``nvidia/AceReason-1.1-SFT``'s ``output``) may begin with
    ``<think>``; the prompt already opened it, so it is stripped here, and the turn is closed with
    ``<|im_end|>``.
    """
    text = output.lstrip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):].lstrip("\n")
    return text.rstrip() + IM_END
