import type { Admin, Message } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import type { PushJob } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { KafkaPushQueue } from "./push-queue.js";

const job = (attempts: number): PushJob => ({
  id: "job-1",
  key: "k-1",
  provider: "webhook",
  token: "https://example.invalid/hook",
  device: null,
  notification: {
    id: "n-1",
    userId: "ann",
    conversationId: "dm:ann:ben",
    title: "ben",
    body: "hi",
    ttlSeconds: 60,
    messageCount: 1,
  },
  attempts,
  notBeforeMs: 0,
  createdAtMs: 1,
});

/** A push queue over a producer that fails the first `failures` sends, and one owned partition. */
function queueWith(failures: number) {
  const sends: Array<{ key: string; value: string | null }> = [];
  let left = failures;
  const producer = {
    send: async (_topic: string, m: Message) => {
      sends.push({ key: String(m.key), value: m.value === null ? null : String(m.value) });
      if (left-- > 0) throw new Error("NOT_LEADER_FOR_PARTITION");
    },
  } as unknown as BatchProducer;
  const admin = {
    fetchTopicMetadata: async () => ({ topics: [{ name: "push-jobs", partitions: [{ partitionId: 0 }] }] }),
  } as unknown as Admin;
  const queue = new KafkaPushQueue({
    kafka: {} as never,
    admin,
    groupId: "push",
    topic: "push-jobs",
    deadLetters: { add: async () => ({}) as never },
    partitions: 1,
    producer,
    log: createLogger({ test: "push-queue" }),
    ownWriteRetryDelaysMs: [1, 1, 1],
    parkedRetryMs: 30,
  });
  const internals = queue as unknown as {
    owned: Map<number, { end: bigint; caughtUp: boolean; live: Map<string, PushJob> }>;
    deliver: (j: PushJob) => Promise<void>;
    release(): void;
  };
  return { queue, internals, sends };
}

describe("push queue: the owner's own writes", () => {
  it("a retry record that Kafka fails for a moment is written again, with backoff, until it lands", async () => {
    const { queue, internals, sends } = queueWith(2);
    internals.owned.set(0, { end: 0n, caughtUp: true, live: new Map([["k-1", job(1)]]) });
    await queue.put(job(2));
    expect(sends.map((s) => JSON.parse(s.value!).attempts)).toEqual([2, 2, 2]);
    // A tombstone too.
    const tombstones = queueWith(1);
    tombstones.internals.owned.set(0, { end: 0n, caughtUp: true, live: new Map([["k-1", job(2)]]) });
    await tombstones.queue.finish(job(2));
    expect(tombstones.sends).toEqual([
      { key: "k-1", value: null },
      { key: "k-1", value: null },
    ]);
  });

  it("is bounded: a write still failing is reported; the job is offered again later with its new state", async () => {
    const { queue, internals, sends } = queueWith(100);
    const delivered: PushJob[] = [];
    internals.owned.set(0, { end: 0n, caughtUp: true, live: new Map([["k-1", job(1)]]) });
    // The deliverer (internal/push) writes the retry record before it waits; Kafka fails it for good,
    // and its delivery returns without ending the job.
    internals.deliver = async (j) => {
      delivered.push(j);
      if (delivered.length === 1)
        await queue.put({ ...j, attempts: 2, notBeforeMs: 123 }).catch(() => undefined);
    };
    internals.release();
    await new Promise((r) => setTimeout(r, 10));
    expect(sends.length).toBe(4); // 1 + 3 retries
    expect(delivered.length).toBe(1);
    // Not parked until the next assignment: offered again, with the attempt count it reached.
    await new Promise((r) => setTimeout(r, 50));
    expect(delivered.slice(0, 2).map((j) => [j.attempts, j.notBeforeMs])).toEqual([
      [1, 0],
      [2, 123],
    ]);
    // Closed: nothing is offered any more.
    await queue.close();
    const offered = delivered.length;
    await new Promise((r) => setTimeout(r, 80));
    expect(delivered.length).toBe(offered);
  });

  it("a new job's put is not retried here (its caller retries)", async () => {
    const { queue, sends } = queueWith(1);
    await expect(queue.put(job(0))).rejects.toThrow("NOT_LEADER_FOR_PARTITION");
    expect(sends.length).toBe(1);
  });
});

describe("push queue: records of older push processes", () => {
  it("a keyed job's retry record written under its id (by a process from before job keys) is ended, and the job goes on under its key", async () => {
    const { queue, internals, sends } = queueWith(0);
    internals.owned.set(0, { end: 0n, caughtUp: true, live: new Map() });
    const onBatch = (queue as unknown as { onBatch(p: unknown): Promise<void> }).onBatch.bind(queue);
    const record = (key: string, j: PushJob, offset: number) => ({
      key: Buffer.from(key),
      value: Buffer.from(JSON.stringify(j)),
      offset: String(offset),
    });
    (queue as unknown as { assigned: Promise<void> }).assigned = Promise.resolve();
    await onBatch({
      batch: { partition: 0, messages: [record("k-1", job(0), 0), record("job-1", job(1), 1)] },
      resolveOffset: () => {},
      heartbeat: async () => {},
    });
    // One live job, under its key, in its newest state; the record under the id is ended.
    expect([...internals.owned.get(0)!.live].map(([k, j]) => [k, j.attempts])).toEqual([["k-1", 1]]);
    await new Promise((r) => setImmediate(r));
    expect(sends).toEqual([{ key: "job-1", value: null }]);
    // Delivered and finished: nothing of it stays live (before, the id's record was offered forever).
    await queue.finish(job(1));
    expect(internals.owned.get(0)!.live.size).toBe(0);
    expect(sends.at(-1)).toEqual({ key: "k-1", value: null });
  });
});
