#!/usr/bin/env bash
# Stops the test Cassandra started by up.sh (SIGTERM, then SIGKILL after 60 s).
# Data stays on disk; the next cold up.sh wipes it unless CASSANDRA_KEEP_DATA=1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=cassandra
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init
sb_lock
sb_stop_server "${CASSANDRA_STOP_TIMEOUT:-60}"
