#!/usr/bin/env bash
# Stops the control plane started by up.sh and leaves nothing running. Only processes
# named in our pid files, and only while they still run our binaries, are signalled.
# Clients and kube-apiserver get SIGTERM at once, then etcd; SIGKILL after 10 s. Logs and
# certificates stay in run/kube/ for debugging; up.sh wipes them on its next cold start.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

# stop NAME...: SIGTERM the named components at once, wait up to 10 s, then SIGKILL.
stop() {
  local name pid pids=() e i
  for name in "$@"; do
    pidfile="$run_dir/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if running_binary "$name" "$pid"; then
      # A SIGSTOPped process would never act on SIGTERM; continue it first.
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
    rm -f "$pidfile"
  done
  [ "${#pids[@]}" -eq 0 ] && return 0
  left() { # the name:pid entries still running our binaries
    for e in "${pids[@]}"; do running_binary "${e%%:*}" "${e#*:}" && echo "$e"; done
    return 0
  }
  for ((i = 0; i < 100; i++)); do [ -z "$(left)" ] && break; sleep 0.1; done
  for e in $(left); do
    log "${e%%:*} (${e#*:}) ignored SIGTERM for 10s; killing it"
    kill -KILL "${e#*:}" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do [ -z "$(left)" ] && break; sleep 0.1; done
  [ -z "$(left)" ] || die "could not stop: $(left)"
  log "stopped ${pids[*]}"
}

# etcd last: kube-apiserver's graceful shutdown hangs when etcd is already gone.
stop coredns kwok kube-scheduler kube-controller-manager kube-apiserver
stop etcd
