#!/usr/bin/env bash
# One phase of scripts/gpu_run.sh: CMD under PHASE_TIMEOUT seconds (SIGTERM then, SIGKILL 20 s later),
# its output appended to $OUT/LOG, then that log's last LINES lines without those matching NOISE
# (a grep pattern; "" for none); exits with CMD's status.
#   OUT=DIR PHASE_TIMEOUT=SECONDS bash scripts/run_phase.sh LOG NOISE LINES CMD [ARGS...]
# A file, not a pipe through tee: a process CMD leaves behind in a session of its own would hold a pipe
# open, and the call would wait on it to its end (the GPU machine, 2026-12-04).
set -uo pipefail
log=$OUT/$1 noise=$2 lines=$3 limit=${PHASE_TIMEOUT:-540}
shift 3
timeout -k 20 "$limit" "$@" >> "$log" 2>&1
rc=$?
if [[ -n $noise ]]; then grep -av -e "$noise" "$log"; else cat "$log"; fi | tail -n "$lines"
if [[ $rc == 124 || $rc == 137 ]]; then echo "stopped at PHASE_TIMEOUT=$limit s"; fi
exit $rc
