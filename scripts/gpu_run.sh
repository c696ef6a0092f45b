#!/usr/bin/env bash
# A GPU check on the GPU machine, after the install commands of ../shared/GPU.md ("The big two").
# Carry .gpu/stack/install.sh, .gpu/stack/manifest, .gpu/wheels and .gpu/tiny_sft (a tiny SFT export).
#   bash scripts/gpu_run.sh rollout|megatron|recipe [pytest -k expr]; rlstep|sft [bench arguments]
#   bash scripts/gpu_run.sh fp8conv [bench/fp8_convergence.py arguments]; rollouthost [bench/rollout_host.py ...]
#   bash scripts/gpu_run.sh fp8gemm [bench/fp8_gemm.py arguments]; experience [bench/experience.py arguments]
#   bash scripts/gpu_run.sh start PHASE [arguments]; then, in the next calls, bash scripts/gpu_run.sh wait
#   bash scripts/gpu_run.sh plan FILE: FILE's lines in turn, each "SECONDS PHASE [arguments]" (# comments),
#     within PHASE_TIMEOUT in all; as "start plan FILE", a session's GPU work runs unattended
# start runs PHASE in a process session of its own, which outlives the call (the device tool kills
# what a call leaves running, except a new session) and so can run longer than one call's 10 minutes,
# under DETACHED_TIMEOUT seconds (default 1700; scripts/detach.sh); its logs go to DETACHED_DIR_out
# (DETACHED_DIR: default /tmp/detached).
# wait waits for it (PHASE_TIMEOUT at most) and brings back those logs. The machine goes back 30 s
# after a call: issue the wait calls back to back.
# Each phase stops after PHASE_TIMEOUT seconds (default 540, within the 10-minute limit of a call; SIGKILL
# 20 s after SIGTERM), so that two phases can share one call; logs go to $OUT (appended; at most 8
# files; scripts/run_phase.sh), and the call's exit status is the phase's.
set -uo pipefail
# GPU_RUN_READY is set for the phases of a plan, which this process has prepared; wait needs no preparation
# (a wait call's seconds are the detached work's: the checks below took 14 s of each on 2026-12-04)
if [[ -z ${GPU_RUN_READY:-} && ${1:-} != wait ]]; then
  bash .gpu/stack/install.sh >/tmp/install.log 2>&1 || { cat /tmp/install.log; echo "stack incomplete"; exit 3; }
  . /tmp/site/env.sh
  if [[ ! -f /tmp/site/.wheels.ok ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/* 2>&1 | grep -v "already exists" | tail -3
    touch /tmp/site/.wheels.ok
  fi
  export OUT PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH NEMO_EXT_TINY_SFT=$PWD/.gpu/tiny_sft
  [[ -d .gpu/tiny_sft ]] || unset NEMO_EXT_TINY_SFT
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
  python3 -c "import torch, vllm, transformer_engine, megatron.core as m; print('torch', torch.__version__, 'vllm', vllm.__version__, 'te', transformer_engine.__version__, 'mcore', m.__version__)" 2>&1 | tail -1
  export GPU_RUN_READY=1
fi
phase=$1; shift
DETACHED=${DETACHED_DIR:-/tmp/detached} DETACHED_OUT=${DETACHED_DIR:-/tmp/detached}_out  # start's and wait's
run() { bash scripts/run_phase.sh "$@"; }  # LOG NOISE LINES CMD...: one phase, under PHASE_TIMEOUT
NONE=''
VLLM_NOISE='^INFO\|^(\|WARNING'
case $phase in
  rollout) run rollout.log "$VLLM_NOISE" 60 python3 -m pytest -q -m gpu tests/gpu/test_rollout_gpu.py -s -p no:cacheprovider \
      -k "${1:-not (expandable and megatron) and not (learns and megatron)}" ;;
  megatron) run megatron.log "$NONE" 60 python3 -m pytest -q -m gpu tests/gpu/test_megatron_gpu.py \
      tests/gpu/test_torch_backend_gpu.py -s -p no:cacheprovider -k "${1:-not nothing}" ;;
  recipe) run recipe.log "^INFO\|^(" 40 python3 -m pytest -q -m gpu tests/gpu/test_rl_recipe_gpu.py -s -p no:cacheprovider ;;
  rlstep) mkdir -p /tmp/rlstep; run rl_step.log "$NONE" 30 python3 bench/rl_step.py --logs /tmp/rlstep --out $OUT/rl_step.jsonl "$@"
    rc=$?; tar czf $OUT/rl_step_workers.tgz -C /tmp rlstep; exit $rc ;;
  sft) mkdir -p /tmp/sftlogs; run sft.log "$NONE" 30 python3 bench/sft_throughput.py --worker-logs /tmp/sftlogs --out $OUT/sft.jsonl "$@"
    rc=$?; tar czf $OUT/sft_workers.tgz -C /tmp sftlogs; exit $rc ;;
  fp8gemm) run fp8_gemm.log "$NONE" 30 python3 bench/fp8_gemm.py --out $OUT/fp8_gemm.jsonl "$@" ;;
  experience) run experience.log "$NONE" 5 python3 bench/experience.py "$@" ;;
  rollouthost) run rollout_host.log "$VLLM_NOISE" 5 python3 bench/rollout_host.py "$@" ;;
  fp8conv) run fp8conv.log "$NONE" 30 python3 bench/fp8_convergence.py --out-dir /tmp/fp8conv "$@"
    rc=$?; cp /tmp/fp8conv/losses.json /tmp/fp8conv/fp8_convergence.png $OUT/ 2>/dev/null
    tar czf $OUT/fp8conv_logs.tgz -C /tmp fp8conv; exit $rc ;;
  plan) deadline=$(( $(date +%s) + ${PHASE_TIMEOUT:-540} ))
    while IFS= read -r line; do
      [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
      read -r seconds rest <<< "$line"
      left=$(( deadline - $(date +%s) ))
      (( left < 30 )) && { echo "== skipped, ${left} s left: $line"; continue; }
      echo "== $(date +%T) $line"
      eval "PHASE_TIMEOUT=$(( seconds < left ? seconds : left )) bash scripts/gpu_run.sh $rest"
      rc=$?
      echo "== $(date +%T) rc=$rc"
    done < "$1" ;;
  start) rm -rf "$DETACHED_OUT" && mkdir -p "$DETACHED_OUT"
    OUT=$DETACHED_OUT PHASE_TIMEOUT=${DETACHED_TIMEOUT:-1700} bash scripts/detach.sh start "$DETACHED" \
      bash scripts/gpu_run.sh "$@" ;;
  wait) bash scripts/detach.sh wait "$DETACHED" ${PHASE_TIMEOUT:-540}
    cp -r "$DETACHED_OUT"/. $OUT/ 2>/dev/null; cp "$DETACHED"/log $OUT/detached.log 2>/dev/null
    tail -20 "$DETACHED"/log
    for log in "$DETACHED_OUT"/*.log; do [[ -f $log ]] && { echo "== $log"; tail -20 "$log"; }; done ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac
