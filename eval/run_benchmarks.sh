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
# The project's interpreter: $PYTHON, else the checkout's .venv (make venv), else python3 if it has the
# project's dependencies; otherwise say how to get one, before anything runs.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
needs="import importlib.util as u, sys; missing = [m for m in ('omegaconf', 'transformers', 'vllm', 'math_verify') if u.find_spec(m) is None]; sys.exit(', '.join(missing) or None)"
if ! command -v "$PYTHON" >/dev/null; then
    problem="$PYTHON is not an executable"
elif ! missing="$("$PYTHON" -c "$needs" 2>&1)"; then
    problem="$PYTHON lacks ${missing:-a working standard library}"
fi
if [ -n "${problem:-}" ]; then
    echo "run_benchmarks.sh: no interpreter for the evaluation: $problem; run 'make venv' in $root (creates .venv, used by default), or set PYTHON=/path/to/python of an environment with this project installed (pip install -e '.[cpu]' or '.[gpu]')" >&2
    exit 2
fi
out="$("$PYTHON" -m nemo_ext.evaluation.cli output-dir "$@")"
"$PYTHON" "$root/eval/generate.py" "$@"
"$PYTHON" -m nemo_ext.evaluation.cli score "$@"
"$PYTHON" "$root/eval/report.py" "$out"
