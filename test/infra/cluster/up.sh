#!/usr/bin/env bash
# Starts a multi-process Switchboard on loopback (2 gateways, 2 routers, presence, push, id and a
# sequencer, each its own `switchboard start --role X`), on the test Kafka and Cassandra (started
# here if needed), and prints KEY=value lines on stdout:
#   GATEWAY_URLS=ws://127.0.0.1:<port>/ws,ws://127.0.0.1:<port>/ws
#   GATEWAY_HTTP_URLS, TOKEN_DATA_DIR (sign tokens: switchboard token --user U --data-dir "$TOKEN_DATA_DIR"),
#   CLUSTER_STATE, CLUSTER_TOPIC_PREFIX, CLUSTER_KEYSPACE, KAFKA_BROKERS, CASSANDRA_CONTACT_POINTS
# A running cluster is reused. Environment: CLUSTER_PORT (first port, default 17100; each process
# takes two), SWITCHBOARD_CACHE. Logs: $SWITCHBOARD_CACHE/run/cluster/<process>.log. Stop: down.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
SB_NAME=cluster
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init
sb_lock
command -v node >/dev/null 2>&1 || sb_die "node not found on PATH (Node.js >= 20.19 is needed)"
[ -d "$root/node_modules" ] || sb_die "run npm install in $root first"
# The processes run the built CLI: build (incrementally) so they run the tree as it is.
(cd "$root" && npx tsc -p tsconfig.json) >&2 || sb_die "the TypeScript build failed"
while IFS='=' read -r key value; do
  [ -n "$key" ] && export "$key=$value"
done < <("$here/../kafka/up.sh"; "$here/../cassandra/up.sh")
exec node "$root/dist/test/infra/cluster/main.js" up 9>&-
