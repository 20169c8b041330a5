#!/usr/bin/env bash
# Starts a real Apache Kafka broker (KRaft, one combined broker+controller) on
# 127.0.0.1 for tests, installing it on first use, and prints on stdout exactly:
#   KAFKA_BROKERS=127.0.0.1:<port>
# Everything else goes to stderr. If our broker already runs, it is reused.
#
# Environment:
#   KAFKA_PORT            client port (default 19092)
#   KAFKA_CONTROLLER_PORT KRaft controller port (default KAFKA_PORT+1)
#   KAFKA_KEEP_DATA=1     keep the topics/data of the last run on a cold start
#                         (default: every cold start begins with an empty broker)
#   KAFKA_START_TIMEOUT   seconds to wait for readiness (default 90)
#   KAFKA_JVM_OPTS        extra JVM flags for the broker
#   SWITCHBOARD_CACHE     cache root (default ~/.cache/switchboard)
#   JAVA_HOME             which Java to use (default: java on PATH)
# State: $SWITCHBOARD_CACHE/run/kafka/{server.log,server.pid,data/}. Stop: down.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=kafka
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
sb_init

KAFKA_VERSION=3.9.1
port="${KAFKA_PORT:-19092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
lib="$SB_CACHE/kafka-$KAFKA_VERSION/lib"
data="$SB_RUN/data"

sb_lock

# Reuse a running broker.
if sb_reusable "$port" KAFKA_PORT; then
  echo "KAFKA_BROKERS=127.0.0.1:$port"
  exit 0
fi

sb_require_java 11 17 21
sb_fetch_jars "$here/pom.xml" "$lib" "-Dkafka.version=$KAFKA_VERSION"
sb_require_free_port "$port" "Kafka client listener, KAFKA_PORT"
sb_require_free_port "$controller_port" "Kafka controller listener, KAFKA_CONTROLLER_PORT"

if [ "${KAFKA_KEEP_DATA:-0}" != 1 ]; then rm -rf "$data"; fi
mkdir -p "$data"
sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA_DIR@|$data|g" \
  "$here/server.properties" >"$SB_RUN/server.properties"
cp "$here/log4j.properties" "$SB_RUN/log4j.properties"
echo "$port" >"$SB_RUN/port"

# java expands the quoted wildcard itself (all jars in lib/).
cp_arg="$lib/*"
log4j="-Dlog4j.configuration=file:$SB_RUN/log4j.properties"

sb_cds_opts "$lib"

# Format the KRaft storage once per data dir (kept data is already formatted).
# The cluster id is a random 16-byte UUID in unpadded base64url, like
# `StorageTool random-uuid` prints (one JVM start less); Kafka never lets one start
# with '-' because the CLI would read it as a flag.
if [ ! -f "$data/meta.properties" ]; then
  cluster_id="-"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c 1-22)"
  done
  # A short run: C1 only, and the broker's class archive if there is one yet.
  format_opts=(-Xmx256m -XX:TieredStopAtLevel=1)
  if [ -s "$SB_CDS_ARCHIVE" ]; then format_opts+=(-Xlog:cds=off "-XX:SharedArchiveFile=$SB_CDS_ARCHIVE"); fi
  if ! "$SB_JAVA" "${format_opts[@]}" "$log4j" -cp "$cp_arg" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$SB_RUN/server.properties" --ignore-formatted >"$SB_RUN/format.log" 2>&1; then
    tail -n 30 "$SB_RUN/format.log" >&2
    sb_die "formatting the KRaft storage in $data failed (output above, full: $SB_RUN/format.log)"
  fi
fi

# Extra JVM flags for experiments/debugging, word-split on purpose.
read -r -a extra_opts <<<"${KAFKA_JVM_OPTS:-}"

sb_log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (controller $controller_port)"
# Small fixed heap; G1 with the pause target upstream's kafka-server-start.sh uses.
sb_start "$SB_JAVA" "$SB_MARKER" \
  -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
  -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true "${SB_CDS_OPTS[@]}" \
  "$log4j" -Dkafka.logs.dir="$SB_RUN" "${extra_opts[@]}" \
  -cp "$cp_arg" kafka.Kafka "$SB_RUN/server.properties"

# "Kafka Server started" is logged once the broker has registered with the
# controller and unfenced, i.e. it can serve metadata and produce requests.
sb_wait_ready "$port" 'Kafka Server started' "${KAFKA_START_TIMEOUT:-90}"
echo "KAFKA_BROKERS=127.0.0.1:$port"
