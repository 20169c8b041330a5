/**
 * The backend contract against Kafka + Cassandra (real servers from test/infra). One keyspace per
 * run (migrations are slow schema changes), topics and consumer groups per test (namespace prefix).
 */

import cassandra from "cassandra-driver";
import { Kafka, logLevel, Partitioners } from "kafkajs";
import { describe, expect, it } from "vitest";
import {
  type DistributedOptions,
  openDistributedBackends,
} from "../../internal/backends/distributed/index.js";
import { topicNames } from "../../internal/backends/kafka/topics.js";
import type { AppendResult } from "../../internal/backends/types.js";
import { createLogger } from "../../internal/lib/log.js";
import { ensureServer } from "../infra/servers.js";
import { describeBackendContract } from "./backends.contract.js";
import { draft, range, seqs, sleep } from "./harness.js";

const keyspace = `contract_${Date.now().toString(36)}`;
let servers: Promise<{ brokers: string[]; contactPoints: string[]; datacenter: string }> | undefined;

function infra() {
  servers ??= (async () => {
    const kafka = await ensureServer("kafka");
    const cassandra = await ensureServer("cassandra");
    return {
      brokers: kafka.KAFKA_BROKERS!.split(","),
      contactPoints: cassandra.CASSANDRA_CONTACT_POINTS!.split(","),
      datacenter: cassandra.CASSANDRA_DATACENTER ?? "datacenter1",
    };
  })();
  return servers;
}

async function deleteTopics(brokers: string[], prefix: string): Promise<void> {
  const admin = new Kafka({ clientId: "contract-cleanup", brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    await admin.deleteTopics({ topics: Object.values(topicNames(prefix)) });
  } finally {
    await admin.disconnect();
  }
}

describeBackendContract(
  "distributed",
  async ({ namespace }) => {
    const s = await infra();
    const open = (o: Partial<DistributedOptions> = {}) =>
      openDistributedBackends({
        brokers: s.brokers,
        clientId: `contract-${namespace}`,
        topicPrefix: `${namespace}.`,
        partitions: 3,
        replicationFactor: 1,
        retentionHours: 1,
        appendTimeoutMs: 20_000,
        // The contract's consumers read the sequenced log, which Kafka has only when it is published.
        publishSequenced: true,
        // No margin for first attempts (kafka/recent-sends.ts): the sequencer trusts them as soon as
        // they come after its claim, so the suite's hinted sends take the path that skips the lookup.
        firstAttemptMarginMs: 0,
        cassandra: { contactPoints: s.contactPoints, localDataCenter: s.datacenter, keyspace },
        log: createLogger({ test: "contract" }),
        ...o,
      });
    return {
      backends: await open(),
      reopen: () => open(),
      // Another process's client of the same topics and keyspace: no sequencer (which would make the
      // first instance's group rebalance), nothing it sends, nothing to provision.
      peer: () =>
        open({ clientId: `contract-${namespace}-peer`, sequencer: false, appends: false, provision: false }),
      // Delete this test's topics: a broker restart later in the run recovers every partition it has.
      dispose: () => deleteTopics(s.brokers, `${namespace}.`),
    };
  },
  { eventuallyMs: 30_000 },
);

/** The distributed backends on topics of their own (`prefix`), in this file's keyspace. */
function openOwnTopics(
  s: Awaited<ReturnType<typeof infra>>,
  prefix: string,
  test: string,
  o: Pick<DistributedOptions, "partitions"> & Partial<DistributedOptions>,
) {
  return openDistributedBackends({
    brokers: s.brokers,
    clientId: `contract-${test}`,
    topicPrefix: prefix,
    replicationFactor: 1,
    retentionHours: 1,
    appendTimeoutMs: 20_000,
    cassandra: { contactPoints: s.contactPoints, localDataCenter: s.datacenter, keyspace },
    log: createLogger({ test }),
    ...o,
  });
}

describe("distributed: the sequencer and first attempts", () => {
  it("looks up no key of a first attempt received a margin after its claim, and answers repeats from memory", async () => {
    const s = await infra();
    const prefix = `first_${Date.now().toString(36)}.`;
    const marginMs = 5_000; // wide enough for k0's ack and k1's append on a loaded machine
    const backends = await openOwnTopics(s, prefix, "first-attempts", {
      partitions: 1,
      firstAttemptMarginMs: marginMs,
    });
    try {
      const checks = () => backends.requests.kafka.dedupeChecks();
      const hinted = (d: ReturnType<typeof draft>) =>
        backends.log.append(d, { firstAttemptResendsAfterMs: Date.now() });
      const [a, b] = [`g:${prefix}a`, `g:${prefix}b`];
      // The first draft makes the sequencer claim the partition; within the margin after that
      // claim a first attempt is looked up like any other draft.
      const k0 = await backends.log.append(draft(a, "fa", "k0"));
      const k1 = await hinted(draft(a, "fa", "k1"));
      expect(checks()).toEqual({ store: 2, memory: 0, trusted: 0 });
      await sleep(marginMs + 100);

      const later = await Promise.all(range(2, 21).map((i) => hinted(draft(i % 2 ? b : a, "fa", `k${i}`))));
      expect(later.filter((r) => r.duplicate)).toEqual([]);
      expect(checks()).toEqual({ store: 2, memory: 0, trusted: 20 });

      // A resend (no hint) and a copy of a first attempt (the same hint) are found in memory.
      const resend = await backends.log.append(draft(b, "fa", "k3", "resend"));
      const copy = await hinted(draft(a, "fa", "k4", "copy"));
      expect(resend).toEqual({ duplicate: true, message: later[1]!.message });
      expect(copy).toEqual({ duplicate: true, message: later[2]!.message });
      expect(checks()).toEqual({ store: 2, memory: 2, trusted: 20 });

      const ofA = [k0, k1, ...later].map((r) => r.message).filter((m) => m.conversationId === a);
      const ofB = later.map((r) => r.message).filter((m) => m.conversationId === b);
      expect(seqs(ofA).sort((x, y) => x - y)).toEqual(range(1, 12));
      expect(seqs(ofB).sort((x, y) => x - y)).toEqual(range(1, 10));
    } finally {
      await backends.close();
      await deleteTopics(s.brokers, prefix);
    }
  }, 120_000);
});

describe("distributed: a resend that overtakes its first transmission", () => {
  it("is answered through the process that appended the first one once that is sequenced, not as a new message", async () => {
    const s = await infra();
    const prefix = `overtake_${Date.now().toString(36)}.`;
    // A process whose drafts wait in the log: no sequencer runs yet.
    const appender = await openOwnTopics(s, prefix, "overtake-appender", {
      partitions: 1,
      sequencer: false,
      appendTimeoutMs: 1_500,
    });
    let sequencer: Awaited<ReturnType<typeof openOwnTopics>> | undefined;
    try {
      const conversation = `g:${prefix}`;
      const first = draft(conversation, "ov", "k1");
      await expect(appender.log.append(first)).rejects.toMatchObject({ reason: "SEQUENCE_TIMEOUT" });
      // Nothing of this process waits for another key, and nothing is stored for either yet.
      expect(appender.log.awaiting?.(conversation, "ov", "k2")).toBeUndefined();
      expect(await appender.log.appended(conversation, "ov", "k1")).toBeUndefined();
      // The first transmission is in the log, not sequenced: its resend is told to retry (retryable),
      // not that the message does not exist (which a sender refused for permission would hear).
      await expect(appender.log.awaiting?.(conversation, "ov", "k1")).rejects.toMatchObject({
        reason: "SEQUENCE_TIMEOUT",
      });
      sequencer = await openOwnTopics(s, prefix, "overtake-sequencer", { partitions: 1, appends: false });
      const answers: AppendResult[] = [];
      for (;;) {
        const waiting = appender.log.awaiting?.(conversation, "ov", "k1");
        if (!waiting) break; // answered between two waits
        const answer = await waiting.catch(() => undefined);
        if (answer) {
          answers.push(answer);
          break;
        }
      }
      const stored = { conversationId: conversation, messageId: first.messageId, seq: 1 };
      for (const a of answers) expect(a.message).toMatchObject(stored);
      // From then on it is found stored, and nothing waits for it here.
      expect(appender.log.awaiting?.(conversation, "ov", "k1")).toBeUndefined();
      expect(await appender.log.appended(conversation, "ov", "k1")).toMatchObject(stored);
    } finally {
      await sequencer?.close();
      await appender.close();
      await deleteTopics(s.brokers, prefix);
    }
  }, 120_000);
});

describe("distributed: a resend through another process than its first transmission", () => {
  it("is looked up only once the log is sequenced up to it: the first one's message once stored, a timeout while none sequences", async () => {
    const s = await infra();
    const prefix = `overtake2_${Date.now().toString(36)}.`;
    const options = { partitions: 2, sequencer: false, appendTimeoutMs: 1_500 } as const;
    // Two processes that append (gateways); no sequencer runs yet, so drafts wait in the log.
    const first = await openOwnTopics(s, prefix, "overtake2-first", options);
    const other = await openOwnTopics(s, prefix, "overtake2-other", options);
    let sequencer: Awaited<ReturnType<typeof openOwnTopics>> | undefined;
    try {
      const conversation = `g:${prefix}`;
      const sent = draft(conversation, "ov", "k1");
      await expect(first.log.append(sent)).rejects.toMatchObject({ reason: "SEQUENCE_TIMEOUT" });
      // The other process knows nothing of it: nothing awaited there, nothing stored yet, and the log
      // is not sequenced up to now, so it cannot yet say the key was never sent (retryable).
      expect(other.log.awaiting?.(conversation, "ov", "k1")).toBeUndefined();
      expect(await other.log.appended(conversation, "ov", "k1")).toBeUndefined();
      await expect(other.log.sequencedUpToNow?.(conversation)).rejects.toMatchObject({
        reason: "SEQUENCE_TIMEOUT",
      });
      // A conversation of the other partition, where nothing was ever written: nothing to wait for.
      const partitionOf = Partitioners.DefaultPartitioner();
      const metadata = [0, 1].map((partitionId) => ({
        partitionId,
        partitionErrorCode: 0,
        leader: 0,
        replicas: [],
        isr: [],
      }));
      const partition = (key: string) =>
        partitionOf({
          topic: `${prefix}messages`,
          partitionMetadata: metadata,
          message: { key, value: null },
        });
      const empty = range(1, 100)
        .map((i) => `g:${prefix}${i}`)
        .find((c) => partition(c) !== partition(conversation));
      await other.log.sequencedUpToNow?.(empty!);
      sequencer = await openOwnTopics(s, prefix, "overtake2-sequencer", { partitions: 2, appends: false });
      // Once the sequencers took the partition up to the call, the first transmission is found stored.
      await expect
        .poll(
          () =>
            other.log.sequencedUpToNow?.(conversation).then(
              () => true,
              () => false,
            ),
          { timeout: 60_000 },
        )
        .toBe(true);
      expect(await other.log.appended(conversation, "ov", "k1")).toMatchObject({
        conversationId: conversation,
        messageId: sent.messageId,
        seq: 1,
      });
    } finally {
      await sequencer?.close();
      await other.close();
      await first.close();
      await deleteTopics(s.brokers, prefix);
    }
  }, 120_000);
});

describe("distributed: a keyspace restored beside fresh topics", () => {
  it("delivers into the inboxes of users whose heads hold the old topics' applied offsets", async () => {
    const s = await infra();
    const tag = Date.now().toString(36);
    const [oldPrefix, newPrefix] = [`restore_${tag}_a.`, `restore_${tag}_b.`];
    const [u, v, group] = [`u_${tag}`, `v_${tag}`, `g:restore_${tag}`];
    const open = (prefix: string) => openOwnTopics(s, prefix, "restore", { partitions: 1 });
    const delivered = (backends: Awaited<ReturnType<typeof open>>) =>
      backends.log.deliveries!({ deliver: async () => {}, membershipChanged: () => {} });
    try {
      // The cluster before: five messages applied to u's and v's inboxes at offsets 0..4 and more.
      const before = await open(oldPrefix);
      try {
        const deliveries = await delivered(before);
        await before.membership.createConversation(
          { id: group, kind: "group", name: "restore", owner: u, open: true, createdAtMs: 1000 },
          [u, v],
        );
        for (const i of range(1, 5)) await before.log.append(draft(group, u, `before-${i}`));
        await expect.poll(() => before.inbox.head(v), { timeout: 30_000 }).toBe(5);
        await deliveries.close();
      } finally {
        await before.close();
      }
      // u's head as a version before heads named their topic wrote it (v's keeps the name).
      const db = new cassandra.Client({ contactPoints: s.contactPoints, localDataCenter: s.datacenter });
      try {
        await db.execute(`DELETE applied_log FROM ${keyspace}.inbox_heads WHERE user_id = ?`, [u], {
          prepare: true,
        });
      } finally {
        await db.shutdown();
      }
      // The same keyspace with fresh topics (another prefix), as the restore procedure has it: the
      // inbox topic starts again at offset 0, below the offsets the heads hold.
      const after = await open(newPrefix);
      try {
        const deliveries = await delivered(after);
        const sent = await after.log.append(draft(group, u, "after-1"));
        expect(sent.message.seq).toBe(6);
        await expect.poll(() => after.inbox.head(v), { timeout: 30_000 }).toBe(6);
        const last = await after.inbox.read(v, 5, 10);
        expect(last.map((e) => [e.cursor, e.seq, e.messageId])).toEqual([[6, 6, sent.message.messageId]]);
        expect(await after.inbox.head(u)).toBe(6);
        await deliveries.close();
      } finally {
        await after.close();
      }
    } finally {
      await deleteTopics(s.brokers, oldPrefix);
      await deleteTopics(s.brokers, newPrefix);
    }
  }, 120_000);
});

describe("distributed: the topics' partition count", () => {
  it("refuses to open on message topics whose partition count is not kafka.partitions", async () => {
    const s = await infra();
    const prefix = `parts_${Date.now().toString(36)}.`;
    const open = (partitions: number) =>
      openOwnTopics(s, prefix, "partitions", { partitions, sequencer: false });
    try {
      await (await open(2)).close();
      // Topics that exist are left as they are: the count no longer matches, and nothing opens.
      await expect(open(3)).rejects.toMatchObject({
        reason: "PARTITIONS_CHANGED",
        message: expect.stringContaining(`${prefix}messages has 2 partitions but kafka.partitions is 3`),
      });
      await (await open(2)).close();
    } finally {
      await deleteTopics(s.brokers, prefix);
    }
  });
});
