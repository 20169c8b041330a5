/**
 * What the partition-owning consumers (sequencer, inbox owner) and the log's consumers share: how they
 * read their partitions, and how a handled batch is committed.
 */
import type { Attributes } from "@opentelemetry/api";
import type { Consumer, EachBatchPayload, Kafka, PartitionAssigner, TopicPartitionOffset } from "kafkajs";
import type { Logger } from "../../lib/log.js";
import { inSpan, linksTo, MessageSpans, SpanKind, type TraceCarrier, tracing } from "../../lib/tracing.js";
import { traceOf } from "./codec.js";

/**
 * Every partition of a fetch at once: kafkajs fetches from a broker again only when every batch of its
 * last fetch is done, so partitions handled in waves add up their waits. One partition's batches still
 * run one after another (that is the order the owners rely on).
 */
export const PARTITIONS_CONSUMED_CONCURRENTLY = 64;

/** How often the partition owners commit what they resolved (PeriodicCommits). */
export const COMMIT_INTERVAL_MS = 1_000;

/**
 * A batch arrived: its partition's lag counts it until it is committed (commitBatch), so a batch that
 * keeps failing or hangs shows as lag instead of leaving the last good value in place.
 */
export function batchArrived({ batch }: Pick<EachBatchPayload, "batch">, lag: ConsumerLag): void {
  const first = batch.messages[0]?.offset;
  if (first !== undefined) lag.set(batch.partition, Number(batch.highWatermark) - Number(first));
}

/**
 * Marks a batch whose effects are durable as done: its last offset is resolved and committed (at
 * once, or with the owner's next periodic commit when `commits` is given), then the member
 * heartbeats. A batch whose partition moved on meanwhile (stale) is left to the new owner.
 */
export async function commitBatch(
  { batch, resolveOffset, commitOffsetsIfNecessary, heartbeat, isStale }: EachBatchPayload,
  lag?: ConsumerLag,
  commits?: PeriodicCommits,
): Promise<void> {
  if (isStale()) return;
  const last = batch.messages.at(-1)!.offset;
  const next = String(Number(last) + 1);
  lag?.set(batch.partition, Number(batch.highWatermark) - Number(next));
  resolveOffset(last);
  if (commits) commits.resolved(batch.topic, batch.partition, next);
  else
    await commitOffsetsIfNecessary({
      topics: [{ topic: batch.topic, partitions: [{ partition: batch.partition, offset: next }] }],
    });
  await heartbeat();
}

/**
 * The partition owners' (sequencer, inbox owner) offset commits: what they resolved, once a second
 * and on close, instead of a commit per batch. A commit is a broker write that kafkajs would have the
 * owner wait for before it fetches the partition again (with autoCommit on, too: it commits after
 * every batch whatever the interval). Yet a committed offset only bounds what a successor re-reads
 * after a crash, and the owners' effects are idempotent (dedupe rows; the applied inbox offset), so it
 * need not be on any batch's path. A failed commit is retried with the next one; a new group
 * generation drops what the old one resolved (its new owner re-reads from the last commit), also what
 * a commit in flight across reset() fails to commit.
 */
export class PeriodicCommits {
  private readonly pending = new Map<string, TopicPartitionOffset>();
  /**
   * Bumped by reset(): a commit that fails is retried with the next one only if no new generation
   * began meanwhile. Offsets the old generation resolved are not this member's to commit in the new
   * one (its new owner may be further on: committing them would move its offset back).
   */
  private generation = 0;
  private timer: NodeJS.Timeout | undefined;
  private committing: Promise<void> | undefined;

  constructor(
    private readonly consumer: Pick<Consumer, "commitOffsets">,
    private readonly log: Logger,
    private readonly intervalMs = COMMIT_INTERVAL_MS,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.flush(), this.intervalMs);
    this.timer.unref();
  }

  resolved(topic: string, partition: number, offset: string): void {
    this.pending.set(`${topic}\u0000${partition}`, { topic, partition, offset });
  }

  /** A new group generation: what the previous one resolved is its successors' to re-read. */
  reset(): void {
    this.generation++;
    this.pending.clear();
  }

  /** Commits what is resolved (one request); resolves when that commit is done, failed or not. */
  flush(): Promise<void> {
    if (this.committing) return this.committing;
    const offsets = [...this.pending.values()];
    this.pending.clear();
    if (offsets.length === 0) return Promise.resolve();
    const generation = this.generation;
    this.committing = this.consumer
      .commitOffsets(offsets)
      .catch((err: unknown) => {
        // Usually a rebalance under way; retried with the next commit unless superseded or reset.
        if (generation === this.generation)
          for (const o of offsets) {
            const key = `${o.topic}\u0000${o.partition}`;
            if (!this.pending.has(key)) this.pending.set(key, o);
          }
        this.log.debug("kafka: offset commit failed; retried with the next one", {
          error: err instanceof Error ? err.message : String(err),
        });
      })
      .finally(() => {
        this.committing = undefined;
      });
    return this.committing;
  }

  /** Stops the timer and commits what is resolved (call before the consumer disconnects). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.committing;
    await this.flush();
  }
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

/**
 * How long the broker holds a fetch that finds no records (kafkajs's maxWaitTimeInMs). A fetch is
 * answered as soon as a record arrives (minBytes 1), so this adds no latency to a record; it sets how
 * often an idle consumer asks again, and how late a member notices a rebalance (kafkajs heartbeats
 * between fetches) and stops. Groups shared by several processes (sequencer, inbox owners, push,
 * event streams) keep rebalances quick; a group of one process (its routing table, its replies) has
 * no one to rebalance with, so it asks rarely: at 50 and 100 ms, those two fetch loops in every
 * process were most of an idle cluster's CPU (bench/README.md, "An idle cluster").
 */
export const FETCH_WAIT_MS = { sharedGroup: 200, ownGroup: 500 } as const;

/** A consumer of one of the platform's groups: a member that stops heartbeating for 10 s is out. */
export function groupConsumer(
  kafka: Kafka,
  groupId: string,
  maxWaitTimeInMs: number,
  partitionAssigners?: PartitionAssigner[],
): Consumer {
  return kafka.consumer({
    groupId,
    sessionTimeout: 10_000,
    heartbeatInterval: 1_000,
    maxWaitTimeInMs,
    allowAutoTopicCreation: false,
    ...(partitionAssigners ? { partitionAssigners } : {}),
  });
}
