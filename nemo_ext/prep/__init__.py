"""Data preparation jobs (the library behind ``data_prep/*.py``): curation, RL prompt files, packing.

They sit above both ``nemo_ext.data`` (the primitives they compose: sources, prompts, tokenization,
packing, shards, n-gram decontamination) and ``nemo_ext.evaluation`` (the benchmark registry they
decontaminate against), so ``nemo_ext.data`` imports neither.
"""
