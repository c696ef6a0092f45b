"""The megatron-core training backend (docs/megatron.md).

``convert``, ``fallback_kernels``, ``impl``, ``layout`` and ``vocab_parallel`` are pure torch and import without
megatron-core; ``backend`` (``MegatronBackend``) needs it.
"""
