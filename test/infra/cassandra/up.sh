#!/usr/bin/env bash
# Starts a real single-node Apache Cassandra 5.0 on 127.0.0.1 for tests, installing
# it on first use, and prints on stdout exactly:
#   CASSANDRA_CONTACT_POINTS=127.0.0.1:<port>
#   CASSANDRA_DATACENTER=datacenter1
# Everything else goes to stderr. If our node already runs, it is reused.
#
# Environment:
#   CASSANDRA_PORT            CQL (native transport) port (default 19042)
#   CASSANDRA_STORAGE_PORT    inter-node port (default 17000; bound even for one node)
#   CASSANDRA_JMX_PORT        JMX port on 127.0.0.1, for nodetool (default 17199)
#   CASSANDRA_HEAP            -Xms/-Xmx (default 1g: every test server makes a keyspace of 18
#                             tables, about 0.6 MB of heap each before any write; a full test
#                             run's keyspaces overflowed 768m)
#   CASSANDRA_KEEP_DATA=1     keep the keyspaces/data of the last run on a cold start
#                             (default: every cold start begins with an empty node)
#   CASSANDRA_START_TIMEOUT   seconds to wait for readiness (default 180)
#   CASSANDRA_JVM_OPTS        extra JVM flags, e.g. -XX:TieredStopAtLevel=1 (C1 only:
#                             ~30% less CPU to start, slower once warm)
#   SWITCHBOARD_CACHE         cache root (default ~/.cache/switchboard)
#   JAVA_HOME                 which Java to use (Cassandra 5.0 runs on 11 or 17 only)
# State: $SWITCHBOARD_CACHE/run/cassandra/{server.log,server.pid,data/}. Stop: down.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=cassandra
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init

CASSANDRA_VERSION=5.0.9
port="${CASSANDRA_PORT:-19042}"
storage_port="${CASSANDRA_STORAGE_PORT:-17000}"
jmx_port="${CASSANDRA_JMX_PORT:-17199}"
heap="${CASSANDRA_HEAP:-1g}"
lib="$SB_CACHE/cassandra-$CASSANDRA_VERSION/lib"
data="$SB_RUN/data"

print_env() {
  echo "CASSANDRA_CONTACT_POINTS=127.0.0.1:$port"
  echo "CASSANDRA_DATACENTER=datacenter1"
}

sb_lock

# CASSANDRA_COMMITLOG_SYNC=periodic: acknowledge writes before their commit log section is synced
# (production's usual mode, where replication carries durability). Only for measurements: a kill -9
# of this single node may then lose acknowledged writes, which the fault tests forbid.
commitlog_sync="${CASSANDRA_COMMITLOG_SYNC:-batch}"
case "$commitlog_sync" in
  batch) commitlog_lines="commitlog_sync: batch" ;;
  periodic) commitlog_lines='commitlog_sync: periodic\ncommitlog_sync_period: 10000ms' ;;
  *) sb_die "CASSANDRA_COMMITLOG_SYNC must be batch or periodic, not $commitlog_sync" ;;
esac

# Reuse a running node (of the same commit log mode: a test must never run on a periodic node).
if sb_reusable "$port" CASSANDRA_PORT; then
  running=$(sed -n 's/^commitlog_sync: //p' "$SB_RUN/cassandra.yaml" 2>/dev/null || true)
  if [ "$running" != "$commitlog_sync" ]; then
    sb_die "the running Cassandra node syncs its commit log in ${running:-unknown} mode, not $commitlog_sync (CASSANDRA_COMMITLOG_SYNC): stop it first (bash test/infra/down.sh cassandra)"
  fi
  print_env
  exit 0
fi

# Cassandra 5.0 supports Java 11 and 17 only (it calls setSecurityManager, and its
# own launcher refuses anything else).
sb_require_java 11 17
sb_fetch_jars "$here/pom.xml" "$lib" "-Dcassandra.version=$CASSANDRA_VERSION"
sb_require_free_port "$port" "CQL, CASSANDRA_PORT"
sb_require_free_port "$storage_port" "Cassandra storage, CASSANDRA_STORAGE_PORT"
sb_require_free_port "$jmx_port" "Cassandra JMX, CASSANDRA_JMX_PORT"

if [ "${CASSANDRA_KEEP_DATA:-0}" != 1 ]; then rm -rf "$data"; fi
mkdir -p "$data"
sed -e "s|@PORT@|$port|g" -e "s|@STORAGE_PORT@|$storage_port|g" -e "s|@DATA_DIR@|$data|g" \
  "$here/cassandra.yaml" | awk -v lines="$commitlog_lines" '/^commitlog_sync: batch$/ { print lines; next } { print }' \
  >"$SB_RUN/cassandra.yaml"
cp "$here/logback.xml" "$SB_RUN/logback.xml"
echo "$port" >"$SB_RUN/port"

jamm="$(find "$lib" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)"
[ -n "$jamm" ] || sb_die "no jamm-*.jar in $lib (Cassandra needs it as -javaagent); delete $lib to refetch"

# Java 17 module flags, as in Cassandra 5.0's conf/jvm17-server.options: without
# them the JVM dies at startup with InaccessibleObjectException.
jpms=(
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
  --add-exports java.sql/java.sql=ALL-UNNAMED
  --add-exports java.base/java.lang.ref=ALL-UNNAMED
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
  --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
  --add-opens java.base/java.lang.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED
  --add-opens java.base/jdk.internal.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
  --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
)

# Cassandra mlockall()s the whole JVM at startup so the heap is never swapped.
# For a test node that only costs: ~3 s of page faults and an RSS of the full heap.
# It skips the lock (logging a warning) when mlockall fails, so make it fail: a small
# memlock limit, and for root also no CAP_IPC_LOCK (which overrides the limit).
ulimit -l 64
no_mlock=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  no_mlock=(setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock)
fi
# Timer slack of every JVM thread (inherited through exec and by each new thread). Cassandra's
# shared worker pool spins between requests with 10 us sleeps; with Linux's default 50 us slack a
# node that gets a request every few ms burns most of a core waking up (measured here: 0.9-1.2 of
# the 2 cores at 100-500 requests/s, about 0.05 idle). A 1 ms slack lets the kernel coalesce those
# wake-ups: a request waits at most that much longer for a spinning worker. 0 keeps the default.
slack_ns="${CASSANDRA_TIMER_SLACK_NS:-1000000}"
with_slack=()
if [ "$slack_ns" != 0 ] && [ -w /proc/self/timerslack_ns ]; then
  # shellcheck disable=SC2016 # $0 and $@ are for the inner shell
  with_slack=(bash -c 'echo "$0" >/proc/self/timerslack_ns && exec "$@"' "$slack_ns")
fi
# Extra JVM flags for experiments/debugging, word-split on purpose.
read -r -a extra_opts <<<"${CASSANDRA_JVM_OPTS:-}"

# Archiving classes while a -javaagent (jamm) is loaded needs these diagnostic
# flags; jamm only measures object sizes and changes no class, so it is safe.
sb_cds_opts "$lib" -XX:+UnlockDiagnosticVMOptions -XX:+AllowArchivingWithJavaAgent
# Flags beyond upstream's jvm17-server.options, all for a fast, light test node:
#   skip_wait_for_gossip_to_settle=0  a single node has no one to gossip with (~5 s)
#   initial_token=0                   with num_tokens: 1, no token allocation
#   skip_sync=true                    no fsync at all (see commitlog_sync in the yaml)
#   memtable.row_overhead_size=180    the value it would otherwise measure at every
#                                     start by filling a test memtable (~0.5 s)
#   PerfDisableSharedMem              no /tmp/hsperfdata file
sb_log "starting Cassandra $CASSANDRA_VERSION on 127.0.0.1:$port (storage $storage_port, jmx $jmx_port)"
sb_start "${with_slack[@]}" "${no_mlock[@]}" "$SB_JAVA" "$SB_MARKER" \
  "-Xms$heap" "-Xmx$heap" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
  -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$SB_RUN" -XX:+PerfDisableSharedMem \
  "${SB_CDS_OPTS[@]}" "-javaagent:$jamm" -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true \
  -Djava.net.preferIPv4Stack=true -Djna.nosys=true "${jpms[@]}" \
  -Dcassandra-foreground=yes \
  -Dcassandra.config="file://$SB_RUN/cassandra.yaml" \
  -Dcassandra.storagedir="$data" -Dcassandra.logdir="$SB_RUN" \
  -Dlogback.configurationFile="$SB_RUN/logback.xml" \
  -Dcassandra.jmx.local.port="$jmx_port" \
  -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.initial_token=0 \
  -Dcassandra.skip_sync=true -Dcassandra.memtable.row_overhead_size=180 \
  "${extra_opts[@]}" -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon

# The CQL line is logged as the native transport starts; the port check confirms
# the bind. Clients can connect and run CQL from then on.
sb_wait_ready "$port" 'Starting listening for CQL clients' "${CASSANDRA_START_TIMEOUT:-180}"
print_env
