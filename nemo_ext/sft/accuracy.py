"""Held-out exact match after SFT: greedy decoding with transformers, scored by the math reward.

A quick check for small models at the end of a run. Full benchmark evaluation (vLLM, avg@k, the
paper's protocol) is ``eval/run_benchmarks.sh``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemo_ext.data.prompts import EOS_TOKEN, render_prompt
from nemo_ext.rewards.math import score_math


@torch.no_grad()
def heldout_accuracy(model_dir: str | Path, problems: list[dict], max_new_tokens: int,
                     device: torch.device, batch_size: int = 50) -> tuple[float, list[dict]]:
    """Fraction of ``problems`` ({question, answer}) solved under greedy decoding, and per-problem rows."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(device).eval()
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    rows = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        enc = tokenizer([render_prompt(p["question"], "math") for p in chunk], return_tensors="pt",
                        padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for p, text in zip(chunk, texts, strict=True):
            verdict = score_math(text, p["answer"])
            rows.append({**p, "response": text, "reward": verdict.reward, "extracted": verdict.extracted})
    accuracy = sum(r["reward"] for r in rows) / max(1, len(rows))
    return accuracy, rows
