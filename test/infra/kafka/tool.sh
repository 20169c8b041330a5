#!/usr/bin/env bash
# Runs a Kafka CLI tool from the cached jars against the test broker, e.g.
#   test/infra/kafka/tool.sh topics --list
#   echo hi | test/infra/kafka/tool.sh console-producer --topic t
#   test/infra/kafka/tool.sh console-consumer --topic t --from-beginning --max-messages 1
#   test/infra/kafka/tool.sh org.apache.kafka.tools.GetOffsetShell --topic t
# --bootstrap-server 127.0.0.1:$KAFKA_PORT (default 19092) is added for the named tools.
# Class names are those of Kafka 3.9 (several moved in 4.0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SB_NAME=kafka
# shellcheck source=SCRIPTDIR/../lib.sh
. "$here/../lib.sh"
KAFKA_VERSION="$(sed -n 's/^KAFKA_VERSION=//p' "$here/up.sh")"
lib="$SB_CACHE/kafka-$KAFKA_VERSION/lib"
[ -f "$lib/.complete" ] || sb_die "no Kafka jars in $lib; run test/infra/up.sh kafka first"
[ "$#" -gt 0 ] || sb_die "usage: $0 topics|console-producer|console-consumer|consumer-groups|CLASS [args...]"
bootstrap=(--bootstrap-server "127.0.0.1:${KAFKA_PORT:-19092}")
tool="$1"
shift
case "$tool" in
  topics) set -- org.apache.kafka.tools.TopicCommand "${bootstrap[@]}" "$@" ;;
  console-producer) set -- kafka.tools.ConsoleProducer "${bootstrap[@]}" "$@" ;;
  console-consumer) set -- org.apache.kafka.tools.consumer.ConsoleConsumer "${bootstrap[@]}" "$@" ;;
  consumer-groups) set -- org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "${bootstrap[@]}" "$@" ;;
  *) set -- "$tool" "$@" ;;
esac
sb_require_java 11 17 21
# C1 only: these runs are short, and full JIT would just burn the 2 cores.
exec "$SB_JAVA" -Xmx256m -XX:TieredStopAtLevel=1 \
  -Dlog4j.configuration="file:$here/tool-log4j.properties" -cp "$lib/*" "$@"
