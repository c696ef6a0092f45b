"""The paper's prompts, byte for byte as the official AceReason evaluation toolkit builds them.

Source followed: the toolkit's inference script, whose builders are ``preprocess_aime`` (math: the
question ``.strip()``ed, then "\\n\\nPlease place your final answer inside \\\\boxed{}.") and
``preprocess_livecodebench_chatml_template_original`` (code: ``question_content.strip()``; when
``starter_code != ""``, "\\n\\nSolve the problem starting with the provided function header.\\n\\n
Function header:\\n```\\n" + starter_code + "\\n```" then the format instruction, the starter code
inserted unchanged), both inside "<|im_start|>system\\nYou are a helpful and harmless assistant. You
should think step-by-step.<|im_end|>\\n<|im_start|>user\\n" ... "<|im_end|>\\n<|im_start|>assistant
\\n<think>\\n". Read in public copies of that script through the project's code index (the copies did
not name their repository); they agree with ../shared/PAPER.md's "math prompt (1.1)" and "code prompt
(1.1)" rows. The expected strings below are written out by hand from that code.
"""

from nemo_ext.data.prompts import render_prompt

HEAD = ("<|im_start|>system\nYou are a helpful and harmless assistant. You should think step-by-step.<|im_end|>\n"
        "<|im_start|>user\n")
TAIL = "<|im_end|>\n<|im_start|>assistant\n<think>\n"
FORMAT = "Please place the solution code in the following format:\n```python\n# Your solution code here\n```"
# LiveCodeBench's starter code of a LeetCode problem: it ends with a newline and the body's indentation
STARTER = "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        "


def test_math_prompt():
    assert render_prompt("  What is $2+3$?\n", "math") == (
        HEAD + "What is $2+3$?\n\nPlease place your final answer inside \\boxed{}." + TAIL)


def test_code_prompt_without_starter_code():
    assert render_prompt("Read A and B; print A+B.\n", "code") == (
        HEAD + "Read A and B; print A+B.\n\nWrite Python code to solve the problem. " + FORMAT + TAIL)


def test_code_prompt_inserts_the_starter_code_unchanged():
    expected = (HEAD + "Return a+b.\n\nSolve the problem starting with the provided function header.\n\n"
                "Function header:\n```\nclass Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        \n```"
                "\n\n" + FORMAT + TAIL)
    assert render_prompt("Return a+b.", "code", STARTER) == expected
    # the trailing newline and indentation are kept: stripping them (as this project once did) changed
    # the prompt the model was evaluated and trained on by a few tokens
    assert "-> int:\n        \n```" in expected
