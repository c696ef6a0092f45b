"""Loading Hugging Face model configs and tokenizers, and overriding configs across transformers versions.

Both training backends load the policy's config and tokenizer here (``load_hf_config``,
``load_tokenizer``). transformers 5 moved the RoPE base into ``config.rope_parameters["rope_theta"]``
and ignores a ``rope_theta=`` keyword passed to ``from_pretrained``; older versions keep
``config.rope_theta``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase


def load_hf_config(path: str, rope_theta: float | None = None,
                   max_position_embeddings: int | None = None) -> PretrainedConfig:
    """The config of the model at ``path`` (a directory or hub name) with the recipe's overrides."""
    return apply_overrides(AutoConfig.from_pretrained(path), rope_theta, max_position_embeddings)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path``; an error that names the path if there is none."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{path}: no tokenizer loads from here ({err}); a Hugging Face model "
                                "directory holds one (tokenizer.json / tokenizer_config.json)") from err


def rope_theta_of(config: PretrainedConfig) -> float:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)


def apply_overrides(config: PretrainedConfig, rope_theta: float | None = None,
                    max_position_embeddings: int | None = None) -> PretrainedConfig:
    """Set the RoPE base and context length in place (None leaves a value as it is); returns ``config``."""
    if rope_theta is not None:
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict):
            config.rope_parameters = {**params, "rope_theta": float(rope_theta)}
        else:
            config.rope_theta = float(rope_theta)
    if max_position_embeddings is not None:
        config.max_position_embeddings = int(max_position_embeddings)
    return config


def num_parameters(config: PretrainedConfig) -> int:
    """Parameter count of the causal LM ``config`` describes (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def matmul_parameters(config: PretrainedConfig) -> int:
    """The parameters every token is multiplied by, the N of MFU's 6 N FLOPs per token: all but the
    input embedding, a table lookup. With tied embeddings the shared table is counted once, as the
    output layer; untied (Qwen2.5-7B), counting the lookup too would overstate FLOPs by V x H
    (7% at the full 7B, 18% at an 8-layer slice)."""
    lookup = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return num_parameters(config) - lookup
