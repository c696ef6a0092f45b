#!/usr/bin/env bash
# The embedded default, end to end on this machine's CPU: SFT of the tiny Qwen2 on the synthetic
# arithmetic task, then the tiny GRPO schedule, then both checkpoints through the evaluation harness.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}

echo "== 1/1 SFT (recipes/conf/sft/tiny.yaml) -> $OUT/sft"
$PY recipes/sft.py output_dir="$OUT/sft"
