"""The megatron-core training backend (docs/megatron.md).

``convert``, ``fallback_kernels``, ``layout`` and ``vocab_parallel`` are pure torch and import without
megatron-core; ``build_megatron_backend`` imports it on first use.
"""


def build_megatron_backend(cfg, model_path: str, total_steps: int, device=None):
    """``MegatronBackend`` for an ``SFTConfig`` (any config with ``model``, ``trainer``, ``optim``)."""
    from nemo_ext.backends.megatron.backend import MegatronBackend

    return MegatronBackend(model_path, cfg.model, cfg.trainer, cfg.optim, total_steps, device=device)
