#!/usr/bin/env bash
# The embedded default, end to end on this machine's CPU: SFT of the tiny Qwen2 on the synthetic
# arithmetic task, then the tiny GRPO schedule, then both checkpoints through the evaluation harness,
# ending with the results table. Every step resumes if the script is run again after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
export PYTHON=$PY

echo "== 1/4 SFT (recipes/conf/sft/tiny.yaml) -> $OUT/sft"
$PY recipes/sft.py output_dir="$OUT/sft" logging.progress_bar=false
echo "== 2/4 RL (recipes/conf/rl/tiny.yaml) -> $OUT/rl"
$PY recipes/rl.py policy.init="$OUT/sft/hf" output_dir="$OUT/rl"
echo "== 3/4 evaluation of both checkpoints (eval/benchmarks.yaml: embedded)"
bash eval/run_benchmarks.sh "$OUT/sft/hf" embedded output_dir="$OUT/eval/sft"
bash eval/run_benchmarks.sh "$OUT/rl/hf" embedded output_dir="$OUT/eval/rl"
echo "== 4/4 results"
$PY eval/report.py "$OUT/eval/sft" "$OUT/eval/rl" --compare --out "$OUT/report"
