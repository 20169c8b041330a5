/**
 * What the partition-owning consumers (sequencer, inbox owner) and the log's consumers share: how they
 * read their partitions, and how a handled batch is committed.
 */
import type { EachBatchPayload } from "kafkajs";

/**
 * Every partition of a fetch at once: kafkajs fetches from a broker again only when every batch of its
 * last fetch is done, so partitions handled in waves add up their waits. One partition's batches still
 * run one after another (that is the order the owners rely on).
 */
export const PARTITIONS_CONSUMED_CONCURRENTLY = 64;

/**
 * Commits a batch whose effects are durable: its last offset is resolved and committed, then the
 * member heartbeats. A batch whose partition moved on meanwhile (stale) is left to the new owner.
 */
export async function commitBatch({
  batch,
  resolveOffset,
  commitOffsetsIfNecessary,
  heartbeat,
  isStale,
}: EachBatchPayload): Promise<void> {
  if (isStale()) return;
  const last = batch.messages.at(-1)!.offset;
  resolveOffset(last);
  await commitOffsetsIfNecessary({
    topics: [
      {
        topic: batch.topic,
        partitions: [{ partition: batch.partition, offset: String(Number(last) + 1) }],
      },
    ],
  });
  await heartbeat();
}
