"""Data primitives: prompts and chat format, problems, tokenization, packing, shards, batches, curation
primitives (text normalization, n-gram index, length balance), the synthetic task. The jobs that
compose them (curate, RL prompts, pack) live in ``nemo_ext.prep``; nothing here imports them or
``nemo_ext.evaluation``."""
