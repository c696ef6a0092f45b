"""Data: prompts and chat format, tokenization, packing, shards, batches, curation, the synthetic task."""
