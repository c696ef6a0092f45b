"""Supervised fine-tuning: the masked token-level loss and the training loop."""
