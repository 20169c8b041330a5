#!/usr/bin/env bash
# Stops the control plane started by up.sh (reverse start order) and leaves nothing
# running. Only processes named in our pid files, and only if they still run our
# binaries, are signalled. Logs and certificates stay in run/kube/ for debugging; up.sh
# wipes them on its next cold start.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile="$run_dir/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  # The pid may have been reused by an unrelated process since; check the executable.
  # (" (deleted)" is appended when the binary was rebuilt while it ran.)
  if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$bin_dir/$name"* ]]; then
    # A SIGSTOPped process would never act on SIGTERM; continue it first.
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM for 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done
