"""Evaluation with the AceReason-Nemotron 1.1 protocol: benchmark registry and loaders, vLLM generation,
scoring with the reward pool, avg@k / pass@k / majority metrics, and the results report.
See docs/evaluation.md."""
