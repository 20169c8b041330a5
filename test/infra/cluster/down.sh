#!/usr/bin/env bash
# Stops the local multi-process cluster started by up.sh (SIGTERM, SIGKILL after 15 s); leaves
# Kafka and Cassandra running (test/infra/down.sh kafka cassandra stops them).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
SB_NAME=cluster
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init
sb_lock
[ -f "$SB_RUN/state.json" ] || exit 0
[ -f "$root/dist/test/infra/cluster/main.js" ] || (cd "$root" && npx tsc -p tsconfig.json) >&2
node "$root/dist/test/infra/cluster/main.js" down 9>&-
