#!/usr/bin/env bash
# A command in a process session of its own, so that it outlives whatever started it (the device tool
# kills the processes a call leaves behind, except those of a new session), and a wait for it later.
#   bash scripts/detach.sh start DIR CMD [ARGS...]   CMD's output goes to DIR/log, its exit status to DIR/done,
#                                                    its session leader's pid to DIR/pid
#   bash scripts/detach.sh wait DIR SECONDS          until CMD has ended, at most SECONDS;
#                                                    exit 0 if it has, 1 if it still runs
set -uo pipefail
action=${1:-} dir=${2:-}
case $action in
  start) shift 2
    rm -rf "$dir" && mkdir -p "$dir"
    setsid bash -c 'echo $$ > "$0/pid"; "$@" > "$0/log" 2>&1; echo "rc=$?" > "$0/done"' "$dir" "$@" \
      < /dev/null > /dev/null 2>&1 &
    # report only once the new session exists: killing this caller's group before then would take it too
    for _ in $(seq 200); do [[ -s $dir/pid ]] && break; sleep 0.05; done
    [[ -s $dir/pid ]] || { echo "the command did not start within 10 s"; exit 1; }
    echo "started in its own session (pid $(cat "$dir/pid")): $*" ;;
  wait) [[ -d $dir ]] || { echo "nothing was started in $dir"; exit 2; }
    timeout "${3:?seconds to wait}" bash -c 'until [[ -f $0/done ]]; do sleep 2; done' "$dir"
    if [[ -f $dir/done ]]; then echo "finished: $(cat "$dir/done")"; else echo "still running"; exit 1; fi ;;
  *) echo "usage: detach.sh start DIR CMD [ARGS...] | detach.sh wait DIR SECONDS"; exit 2 ;;
esac
