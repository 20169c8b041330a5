#!/usr/bin/env bash
# Runs CQL statements against the test Cassandra (started by up.sh) and prints the
# rows, e.g.: test/infra/cassandra/cql.sh "SELECT release_version FROM system.local"
# Uses the Java driver inside the cached cassandra-all jars (no cqlsh/Python here).
# Env: CASSANDRA_PORT (default 19042).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=cassandra
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
CASSANDRA_VERSION="$(sed -n 's/^CASSANDRA_VERSION=//p' "$here/up.sh")"
lib="$SB_CACHE/cassandra-$CASSANDRA_VERSION/lib"
[ -f "$lib/.complete" ] || sb_die "no Cassandra jars in $lib; run test/infra/up.sh cassandra first"
sb_require_java 11 17
exec "$SB_JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -Dlogback.configurationFile="$here/logback-client.xml" \
  -cp "$lib/*" "$here/Cql.java" "127.0.0.1:${CASSANDRA_PORT:-19042}" "$@"
