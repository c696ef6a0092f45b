"""Model definitions of the project's own: the tiny Qwen2 of the embedded default."""
