/**
 * The distributed path's Kafka producer (internal/backends/kafka/batch-producer.ts) against a real
 * broker: a request that failed must not make a later record vanish (kafkajs's idempotent producer
 * rolls back the sequence numbers of partitions the broker did write, and the broker then takes the
 * next batch for a duplicate: acknowledged, never written), ordered records of a failed request's
 * keys queued behind it fail with it (they would overtake its resends), and records that together exceed
 * the broker's batch limit go out in several requests instead of failing together.
 */
import { Kafka, logLevel, Partitioners } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BatchProducer } from "../../internal/backends/kafka/batch-producer.js";
import { createLogger } from "../../internal/lib/log.js";
import { ensureServer } from "../infra/servers.js";

const prefix = `kp${Date.now().toString(36)}`;
const topics: string[] = [];
let kafka: Kafka;

beforeAll(async () => {
  const env = await ensureServer("kafka");
  kafka = new Kafka({
    clientId: "kafka-producer-test",
    brokers: env.KAFKA_BROKERS!.split(","),
    logLevel: logLevel.NOTHING,
    retry: { retries: 2 },
  });
}, 120_000);

afterAll(async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.deleteTopics({ topics }).catch(() => undefined);
  await admin.disconnect();
});

async function topic(partitions: number): Promise<string> {
  const name = `${prefix}.${topics.length}`;
  topics.push(name);
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({
    topics: [{ topic: name, numPartitions: partitions, replicationFactor: 1 }],
    waitForLeaders: true,
  });
  await admin.disconnect();
  return name;
}

function batchProducer(opts: { requestBytesMax?: number } = {}): BatchProducer {
  return new BatchProducer(
    () =>
      kafka.producer({
        idempotent: true,
        maxInFlightRequests: 1,
        allowAutoTopicCreation: false,
        createPartitioner: Partitioners.DefaultPartitioner,
      }),
    { log: createLogger({ test: "kafka-producer" }), ...opts },
  );
}

/** Every record of one partition, oldest first: values, or `<N bytes>` for large ones. */
async function contents(name: string, partition: number): Promise<string[]> {
  const admin = kafka.admin();
  await admin.connect();
  const end = Number((await admin.fetchTopicOffsets(name)).find((o) => o.partition === partition)!.high);
  await admin.disconnect();
  const out: string[] = [];
  if (end === 0) return out;
  const consumer = kafka.consumer({ groupId: `${name}.read.${partition}` });
  await consumer.connect();
  await consumer.subscribe({ topic: name, fromBeginning: true });
  const done = new Promise<void>((resolve) => {
    void consumer.run({
      eachMessage: async ({ partition: p, message }) => {
        if (p !== partition) return;
        const v = message.value!;
        out.push(v.length > 64 ? `<${v.length} bytes>` : v.toString());
        if (Number(message.offset) + 1 >= end) resolve();
      },
    });
  });
  await done;
  await consumer.disconnect();
  return out;
}

describe("BatchProducer", () => {
  it("loses no record sent after a request that failed with some of its partitions written", async () => {
    const name = await topic(2);
    // No byte limit to speak of, so the oversized record shares a request with a small one.
    const p = batchProducer({ requestBytesMax: 64 * 1024 * 1024 });
    await p.connect();
    try {
      await p.send(name, { partition: 1, value: "a" });
      // One request: partition 0's batch is over the broker's limit, partition 1's is written.
      const failed = await Promise.allSettled([
        p.send(name, { partition: 0, value: Buffer.alloc(1_200_000, 120) }),
        p.send(name, { partition: 1, value: "b" }),
      ]);
      expect(failed.map((r) => r.status)).toEqual(["rejected", "rejected"]);
      for (const v of ["c", "d", "e"]) await p.send(name, { partition: 1, value: v });
      // "b" was written though its request failed (its sender sends again; dedupe absorbs it).
      // With the failed producer kept, the broker took "c" for a repeat of "b" and never wrote it.
      expect(await contents(name, 1)).toEqual(["a", "b", "c", "d", "e"]);
      expect(await contents(name, 0)).toEqual([]);
      expect(p.stats.producersReplaced).toBe(1);
    } finally {
      await p.close();
    }
  });

  it("fails the ordered records of a failed request's keys queued behind it or sent in its turn, and only those", async () => {
    const name = await topic(2);
    const p = batchProducer();
    await p.connect();
    const ordered = { ordered: true };
    try {
      // The oversized record goes alone (over requestBytesMax) and fails; the others wait behind it.
      const oversized = p.send(
        name,
        { key: "k1", partition: 0, value: Buffer.alloc(1_200_000, 120) },
        ordered,
      );
      const x1 = p.send(name, { key: "k1", partition: 0, value: "x1" }, ordered);
      const y1 = p.send(name, { key: "k2", partition: 1, value: "y1" }, ordered);
      const w1 = p.send(name, { key: "k1", partition: 0, value: "w1" }); // not ordered: unaffected
      // Sent in the turn that learns of the failure (before the sender could mark its gap).
      const sameTurn = oversized.then(
        () => [],
        () =>
          Promise.allSettled([
            p.send(name, { key: "k1", partition: 0, value: "x2" }, ordered),
            p.send(name, { key: "k2", partition: 1, value: "y2" }, ordered),
          ]),
      );
      const outcomes = await Promise.allSettled([oversized, x1, y1, w1]);
      expect(outcomes.map((o) => o.status)).toEqual(["rejected", "rejected", "fulfilled", "fulfilled"]);
      const [x2, y2] = await sameTurn;
      expect([x2!.status, y2!.status]).toEqual(["rejected", "fulfilled"]);
      // A later turn's record of the key goes out as usual.
      await new Promise((r) => setImmediate(r));
      await p.send(name, { key: "k1", partition: 0, value: "x3" }, ordered);
      expect(await contents(name, 0)).toEqual(["w1", "x3"]);
      expect(await contents(name, 1)).toEqual(["y1", "y2"]);
    } finally {
      await p.close();
    }
  });

  it("orders records that name their partition by that partition, whatever their key (a sequencer's inbox records)", async () => {
    const name = await topic(2);
    const p = batchProducer();
    await p.connect();
    const ordered = { ordered: true };
    try {
      const oversized = p.send(name, { partition: 0, value: Buffer.alloc(1_200_000, 120) }, ordered);
      const noKey = p.send(name, { partition: 0, value: "m2" }, ordered); // a later message to the same users
      const otherKey = p.send(name, { key: "c9", partition: 0, value: "pull" }, ordered);
      const otherPartition = p.send(name, { partition: 1, value: "n1" }, ordered);
      const outcomes = await Promise.allSettled([oversized, noKey, otherKey, otherPartition]);
      expect(outcomes.map((o) => o.status)).toEqual(["rejected", "rejected", "rejected", "fulfilled"]);
      expect(await contents(name, 0)).toEqual([]); // nothing overtook the failed record
      expect(await contents(name, 1)).toEqual(["n1"]);
    } finally {
      await p.close();
    }
  });

  it("sends records that together exceed the broker's batch limit in several requests", async () => {
    const name = await topic(1);
    const p = batchProducer();
    await p.connect();
    try {
      // 3 × 400 KB to one partition in one turn: 1.2 MB as one batch, over the 1 MiB limit.
      await Promise.all(
        [1, 2, 3].map((i) => p.send(name, { partition: 0, value: Buffer.alloc(400_000, 48 + i) })),
      );
      expect(await contents(name, 0)).toEqual(["<400000 bytes>", "<400000 bytes>", "<400000 bytes>"]);
      expect(p.stats.requests).toBe(2);
      expect(p.stats.producersReplaced).toBe(0);
    } finally {
      await p.close();
    }
  });
});
