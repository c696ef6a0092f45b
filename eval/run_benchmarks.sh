#!/usr/bin/env bash
# Evaluate a Hugging Face checkpoint with the paper's protocol: generate (vLLM), score (reward pool),
# report (markdown table + chart). Resumable: rerun the same command after an interruption.
#
#   eval/run_benchmarks.sh CHECKPOINT [BENCHMARK ...] [key=value ...]
#
# Benchmarks and keys: eval/benchmarks.yaml, nemo_ext/evaluation/config.py, docs/evaluation.md.
# Example: eval/run_benchmarks.sh runs/sft/hf embedded samples=2 max_new_tokens=256
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '5p' "$0" | sed 's/^# *//' >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
out="$("$PYTHON" -m nemo_ext.evaluation.cli output-dir "$@")"
"$PYTHON" "$root/eval/generate.py" "$@"
"$PYTHON" -m nemo_ext.evaluation.cli score "$@"
"$PYTHON" "$root/eval/report.py" "$out"
