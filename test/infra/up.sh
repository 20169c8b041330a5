#!/usr/bin/env bash
# Installs (first time) and starts the named real servers on 127.0.0.1, one after
# another (2 cores), and prints KEY=value lines for their addresses.
# Usage: test/infra/up.sh kafka|cassandra|kube|helm|prometheus|grpcurl|chromium ...
# Each server lives in test/infra/<name>/ with its own up.sh; running again while
# a server runs reuses it. Caches live under ${SWITCHBOARD_CACHE:-~/.cache/switchboard}.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "$#" -gt 0 ] || { echo "usage: $0 kafka|cassandra|kube|helm|prometheus|grpcurl|chromium ..." >&2; exit 2; }
for name in "$@"; do
  script="$here/$name/up.sh"
  [ -x "$script" ] || { echo "test/infra: unknown server '$name' (no $script)" >&2; exit 2; }
  "$script"
done
