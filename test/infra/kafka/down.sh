#!/usr/bin/env bash
# Stops the test Kafka broker started by up.sh (SIGTERM, then SIGKILL after 30 s).
# Data stays on disk; the next cold up.sh wipes it unless KAFKA_KEEP_DATA=1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=kafka
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init
sb_lock
sb_stop_server "${KAFKA_STOP_TIMEOUT:-30}"
