"""GRPO with staged response lengths, overlong filtering and temperature control (docs/rl.md).

Pure algorithms: ``advantages``, ``losses``, ``filters``, ``temperature``, ``stages``. Plumbing:
``prompts``, ``experience``, ``rollout``, ``setup``, ``checkpoint``. The loop: ``grpo.train``.
"""
