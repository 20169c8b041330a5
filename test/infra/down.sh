#!/usr/bin/env bash
# Stops the named servers (all of them when none is named) and leaves nothing running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
names=("$@")
if [ "${#names[@]}" -eq 0 ]; then
  for d in "$here"/*/; do [ -x "$d/down.sh" ] && names+=("$(basename "$d")"); done
fi
status=0
for name in "${names[@]}"; do
  script="$here/$name/down.sh"
  [ -x "$script" ] || { echo "test/infra: unknown server '$name'" >&2; status=2; continue; }
  "$script" || status=$?
done
exit $status
