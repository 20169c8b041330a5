/**
 * What the partition-owning consumers (sequencer, inbox owner) and the log's consumers share: how they
 * read their partitions, and how a handled batch is committed.
 */
import type { Attributes } from "@opentelemetry/api";
import type { EachBatchPayload } from "kafkajs";
import { inSpan, linksTo, MessageSpans, SpanKind, type TraceCarrier, tracing } from "../../lib/tracing.js";
import { traceOf } from "./codec.js";

/**
 * Every partition of a fetch at once: kafkajs fetches from a broker again only when every batch of its
 * last fetch is done, so partitions handled in waves add up their waits. One partition's batches still
 * run one after another (that is the order the owners rely on).
 */
export const PARTITIONS_CONSUMED_CONCURRENTLY = 64;

/**
 * How the consumers commit: kafkajs commits the offsets of resolved batches at most this often (and
 * on every rebalance and error), not once per batch. A committed offset only bounds what a successor
 * re-reads after a crash: every consumer's effects are idempotent (dedupe rows, applied inbox offsets),
 * so a commit is not on any message's path and need not cost a broker write per batch.
 */
export const CONSUMER_COMMIT = { autoCommit: true, autoCommitInterval: 1_000 } as const;

/**
 * Marks a batch whose effects are durable as done: its last offset is resolved (committed with the
 * next periodic commit, CONSUMER_COMMIT), then the member heartbeats. A batch whose partition moved
 * on meanwhile (stale) is left to the new owner.
 */
export async function commitBatch(
  { batch, resolveOffset, commitOffsetsIfNecessary, heartbeat, isStale }: EachBatchPayload,
  lag?: ConsumerLag,
): Promise<void> {
  if (isStale()) return;
  const last = batch.messages.at(-1)!.offset;
  lag?.set(batch.partition, Number(batch.highWatermark) - (Number(last) + 1));
  resolveOffset(last);
  await commitOffsetsIfNecessary();
  await heartbeat();
}

/**
 * How far behind the end of each of its partitions a consumer is, as of its last committed batch
 * (the switchboard_kafka_consumer_lag_records gauge). Cleared on every new group generation: a
 * partition this process no longer owns must not report a lag that nobody updates.
 */
export class ConsumerLag {
  private readonly byPartition = new Map<number, number>();

  constructor(readonly group: string) {}

  set(partition: number, records: number): void {
    this.byPartition.set(partition, Math.max(0, records));
  }

  clear(): void {
    this.byPartition.clear();
  }

  *entries(): Iterable<{ group: string; partition: number; records: number }> {
    for (const [partition, records] of this.byPartition) yield { group: this.group, partition, records };
  }
}

/**
 * Runs `handle` on a non-empty batch of a partition owner (sequencer, inbox owner). With tracing on,
 * in one CONSUMER span for the batch, linked to every message's trace; `handle` gets the records'
 * traces and starts a `messageSpan` span per message in its own trace, all ended with the batch.
 */
export async function handleBatch<K>(
  payload: EachBatchPayload,
  group: string,
  messageSpan: string,
  handle: (spans?: MessageSpans<K>, traces?: Array<TraceCarrier | undefined>) => Promise<void>,
): Promise<void> {
  const { batch } = payload;
  if (batch.messages.length === 0) return;
  if (!tracing.on) return handle();
  const traces = batch.messages.map((m) => traceOf(m.headers));
  const spans = new MessageSpans<K>(messageSpan);
  return inSpan(
    `process ${batch.topic}`,
    { kind: SpanKind.CONSUMER, links: linksTo(traces), attributes: batchAttributes(payload, group) },
    async () => {
      try {
        await handle(spans, traces);
        spans.end();
      } catch (err) {
        spans.end(err);
        throw err;
      }
    },
  );
}

/** OpenTelemetry messaging attributes of a consumed batch's span. */
function batchAttributes({ batch }: EachBatchPayload, group: string): Attributes {
  return {
    "messaging.system": "kafka",
    "messaging.operation.type": "process",
    "messaging.destination.name": batch.topic,
    "messaging.destination.partition.id": String(batch.partition),
    "messaging.consumer.group.name": group,
    "messaging.batch.message_count": batch.messages.length,
  };
}
