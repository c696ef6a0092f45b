"""Architectures of the hub models the real-scale configs name, for building them without a download
(shape tests on the meta device, random-weight throughput benchmarks). Values from each model's
published ``config.json``."""

from __future__ import annotations

from transformers import Qwen2Config

from nemo_ext.models.hf_config import apply_overrides

QWEN2_SHAPES = {
    # Qwen/Qwen2.5-Math-7B: the paper's base model (../shared/PAPER.md, SFT "base model" row).
    "Qwen/Qwen2.5-Math-7B": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                 max_position_embeddings=4096, rope_theta=10_000.0, tie_word_embeddings=False),
    # Qwen/Qwen2.5-1.5B: the shape of the throughput benchmarks (../shared/GPU.md).
    "Qwen/Qwen2.5-1.5B": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              max_position_embeddings=131072, rope_theta=1_000_000.0, tie_word_embeddings=True),
}


def qwen2_config(name: str, **overrides) -> Qwen2Config:
    """The ``Qwen2Config`` of a cataloged hub model, with ``overrides`` applied."""
    if name not in QWEN2_SHAPES:
        raise KeyError(f"{name!r} is not in the catalog; known: {sorted(QWEN2_SHAPES)}")
    shape = dict(QWEN2_SHAPES[name])
    rope_theta = overrides.pop("rope_theta", shape.pop("rope_theta"))
    return apply_overrides(Qwen2Config(**{**shape, "rms_norm_eps": 1e-6, **overrides}), rope_theta=rope_theta)


def random_checkpoint(config: Qwen2Config, out_dir, seed: int = 0):
    """Write random bf16 weights of ``config`` (made on the GPU when there is one) with the project's
    tiny tokenizer as a Hugging Face directory: throughput benchmarks and GPU tests at real shapes,
    nothing downloaded. The random model rarely emits an id the tokenizer knows, which vLLM
    detokenizes as nothing. Returns the directory."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    from nemo_ext.data import prompts
    from nemo_ext.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config.eos_token_id = tokenizer.convert_tokens_to_ids(prompts.EOS_TOKEN)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
