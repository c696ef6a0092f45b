"""The model shapes the GPU benches run, on random weights: the catalog's architectures by short name."""

from __future__ import annotations

SHAPES = {"1.5b": "Qwen/Qwen2.5-1.5B", "7b": "Qwen/Qwen2.5-Math-7B"}  # nemo_ext.models.catalog names


def shape_config(shape: str, layers: int | None = None, max_position_embeddings: int = 131072):
    """``shape``'s Hugging Face config with the paper's long-context RoPE base (1e6), cut to ``layers``
    decoder layers if given; ``tiny``: the project's tiny Qwen2 (CPU dry runs)."""
    if shape == "tiny":
        from nemo_ext.models.tiny import tiny_config

        return tiny_config(512)
    from nemo_ext.models.catalog import qwen2_config

    overrides = {"num_hidden_layers": layers} if layers else {}
    return qwen2_config(SHAPES[shape], rope_theta=1e6, max_position_embeddings=max_position_embeddings, **overrides)
