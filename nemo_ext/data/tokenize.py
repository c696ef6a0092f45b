"""Chat samples (question + teacher output) to token ids with loss on assistant tokens only.

The prompt (system and user turns, then the assistant turn's opening ``<think>\\n``) comes from
``prompts.render_prompt`` and the trained text from ``prompts.render_response``, the same renderers
RL rollouts and evaluation use. The two parts are tokenized separately and concatenated, so the
boundary between untrained and trained tokens is exact rather than recovered from character offsets.
Neither part gets the tokenizer's own special tokens (BOS/EOS): the chat format carries its own.

Left out: multi-turn conversations and tool calls (the AceReason SFT data is single-turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nemo_ext.data.prompts import render_prompt, render_response


@dataclass(frozen=True)
class TokenizedSample:
    """One chat sample as tokens.

    input_ids:  [L] int32, prompt tokens then response tokens.
    prompt_len: number of leading prompt tokens; tokens from ``prompt_len`` on are the assistant's.
    """

    input_ids: np.ndarray
    prompt_len: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_mask(self) -> np.ndarray:
        """[L] int8, 1 on the assistant tokens the model learns to predict, 0 on the prompt."""
        mask = np.ones(len(self.input_ids), dtype=np.int8)
        mask[: self.prompt_len] = 0
        return mask

    def truncated(self, max_len: int) -> TokenizedSample:
        """The first ``max_len`` tokens (keeps the prompt boundary where it falls inside)."""
        return TokenizedSample(self.input_ids[:max_len], min(self.prompt_len, max_len))


def tokenize_chats(
    tokenizer, questions: Sequence[str], outputs: Sequence[str], tasks: Sequence[str]
) -> list[TokenizedSample]:
    """Tokenize a batch of chat samples (one tokenizer call per part, so fast tokenizers batch).

    tokenizer: any Hugging Face tokenizer (``transformers.AutoTokenizer.from_pretrained(path)``).
    questions, outputs, tasks: per sample the user question, the teacher's output and the task
    (``"math"`` or ``"code"``, which picks the paper's instruction).
    """
    prompts = [render_prompt(q, t) for q, t in zip(questions, tasks, strict=True)]
    responses = [render_response(o) for o in outputs]
    if not prompts:
        return []
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [
        TokenizedSample(np.asarray(p + r, dtype=np.int32), len(p))
        for p, r in zip(prompt_ids, response_ids, strict=True)
    ]


def tokenize_chat(tokenizer, question: str, output: str, task: str) -> TokenizedSample:
    """One chat sample; see ``tokenize_chats``."""
    return tokenize_chats(tokenizer, [question], [output], [task])[0]
