/**
 * F6, the zombie sequencer (ADR 0002). First, processes: the sequencer owning the conversations is
 * frozen with SIGSTOP past its Kafka session timeout while drafts keep coming, a second sequencer takes
 * over, then the first is resumed with its stale state. Afterwards no (conversation, seq) was assigned
 * twice, no message got two seqs, every stored row matches its assignment, and every re-emitted
 * sequenced record agrees with the assignment. Second, deterministically in one process: a sequencer
 * is held between assigning a batch and writing it until its successor has claimed the partitions and
 * moved on; its late writes (a stale head among them) must not win, and it must acknowledge nothing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import cassandra from "cassandra-driver";
import { Kafka, logLevel, type Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BatchProducer } from "../../internal/backends/kafka/batch-producer.js";
import { decodeMessage, encodeMessage } from "../../internal/backends/kafka/codec.js";
import {
  FIRST_ATTEMPT_HEADER,
  SEQUENCER_GROUP,
  Sequencer,
  type SequencerOptions,
} from "../../internal/backends/kafka/sequencer.js";
import { topicNames } from "../../internal/backends/kafka/topics.js";
import type { OwnershipStore } from "../../internal/backends/types.js";
import { createLogger } from "../../internal/lib/log.js";
import { Hold, openOwnersStores, provisionForOwners, recordingOwnership } from "../helpers/owners.js";
import { cliPath } from "../helpers/server.js";
import { ensureServer } from "../infra/servers.js";

const id = `${Date.now().toString(36)}${randomBytes(2).toString("hex")}`;
const prefix = `fence-${id}.`;
const keyspace = `fence_${id}`;
const SESSION_TIMEOUT_MS = 10_000;
let infra: Record<string, string>;
const children: ChildProcess[] = [];
const logs = new Map<string, string>();

function startSequencer(name: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [cliPath, "sequencer"], {
    env: {
      ...process.env,
      ...infra,
      SWITCHBOARD_KAFKA_TOPIC_PREFIX: prefix,
      SWITCHBOARD_KAFKA_PARTITIONS: "2",
      // The check below reads what the sequencers published (these drafts address no members, so
      // they make no inbox records).
      SWITCHBOARD_KAFKA_PUBLISH_SEQUENCED: "true",
      SWITCHBOARD_CASSANDRA_KEYSPACE: keyspace,
      SWITCHBOARD_LOG_LEVEL: "error",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  // Keep the tail of its log for failure messages (rebalance errors are expected noise here).
  child.stderr!.on("data", (d: Buffer) => {
    logs.set(name, ((logs.get(name) ?? "") + d.toString()).slice(-4_000));
  });
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes('"started"')) resolve(child);
    });
    child.once("exit", (code) =>
      reject(new Error(`sequencer ${name} exited with ${code}:\n${logs.get(name) ?? ""}`)),
    );
  });
}

/** Produces draft `i` of a conversation: message id `idBase + i`, client_msg_id and body `${sender}${i}`. */
function produceDraft(
  producer: Producer,
  topic: string,
  d: { conversationId: string; sender: string; i: number; idBase: number; headers?: Record<string, string> },
) {
  return producer.send({
    topic,
    acks: -1,
    messages: [
      {
        key: d.conversationId,
        value: encodeMessage({
          conversationId: d.conversationId,
          messageId: String(d.idBase + d.i),
          sender: d.sender,
          clientMsgId: `${d.sender}${d.i}`,
          body: `${d.sender}${d.i}`,
          createdAtMs: Date.now(),
        }),
        ...(d.headers ? { headers: d.headers } : {}),
      },
    ],
  });
}

/** A Kafka client of the test servers and its connected idempotent producer. */
async function connectKafka(clientId: string): Promise<{ kafka: Kafka; producer: Producer }> {
  const kafka = new Kafka({ clientId, brokers: infra.KAFKA_BROKERS!.split(","), logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  return { kafka, producer };
}

/** A scenario's own topics (under `${prefix}${tag}.`), the keyspace's stores, and Kafka with a producer. */
async function openScenario(tag: string, partitions: number) {
  const scenarioPrefix = `${prefix}${tag}.`;
  await provisionForOwners(
    { env: infra, keyspace },
    { prefix: scenarioPrefix, partitions, test: `fence-${tag}` },
  );
  const stores = await openOwnersStores({ env: infra, keyspace });
  return {
    prefix: scenarioPrefix,
    names: topicNames(scenarioPrefix),
    stores,
    ...(await connectKafka(`fence-${tag}`)),
  };
}

/** A sequencer of the scenario's drafts over its stores; the drafts address no members. */
function scenarioSequencer(
  scenario: Awaited<ReturnType<typeof openScenario>>,
  o: Pick<SequencerOptions, "producer" | "ownership" | "firstAttemptMarginMs" | "log" | "beforeWrite">,
): Sequencer {
  const { names, stores } = scenario;
  return new Sequencer({
    kafka: scenario.kafka,
    groupId: `${scenario.prefix}${SEQUENCER_GROUP}`,
    draftsTopic: names.messages,
    sequencedTopic: names.sequenced,
    repliesTopic: names.replies,
    store: stores.sequencer,
    messages: stores.messages,
    membership: {
      membershipSeqs: async () => ({ members: [], departed: [] }),
      boundChanges: async () => ({ members: [], departed: [] }),
      getConversation: async () => undefined,
    },
    pending: new Map(),
    dedupeWindowSeconds: 3600,
    ...o,
  });
}

beforeAll(async () => {
  infra = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  // Create the topics and the schema once, without a sequencer of our own.
  await provisionForOwners({ env: infra, keyspace }, { prefix, partitions: 2, test: "fence" });
});

afterAll(() => {
  for (const c of children) {
    if (c.exitCode === null) {
      c.kill("SIGCONT");
      c.kill("SIGKILL");
    }
  }
});

describe("zombie sequencer", () => {
  it("never assigns a (conversation, seq) twice nor a message two seqs", async () => {
    const { kafka, producer } = await connectKafka("fence-test");
    const names = topicNames(prefix);
    const conversations = ["g:1", "g:2", "g:3", "g:4"];
    const sent: Array<{ conversationId: string; clientMsgId: string; messageId: string }> = [];
    let n = 0;
    const produce = async () => {
      const conversationId = conversations[n % conversations.length]!;
      const i = n++;
      // Every 7th draft repeats an earlier send of its conversation: a client resend (new message id).
      const resendOf =
        i % 7 === 6 ? sent.filter((s) => s.conversationId === conversationId).at(-1) : undefined;
      const clientMsgId = resendOf?.clientMsgId ?? `c${i}`;
      const draft = {
        conversationId,
        messageId: String(1_000_000 + i),
        sender: "fencer",
        clientMsgId,
        body: `m${i}`,
        createdAtMs: Date.now(),
      };
      sent.push({ conversationId, clientMsgId, messageId: draft.messageId });
      await producer.send({
        topic: names.messages,
        acks: -1,
        messages: [{ key: conversationId, value: encodeMessage(draft) }],
      });
    };

    const a = await startSequencer("A");
    let producing = true;
    const load = (async () => {
      while (producing) {
        await produce();
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    await new Promise((r) => setTimeout(r, 3_000));
    a.kill("SIGSTOP"); // A freezes mid-stream, holding partitions and possibly a batch in flight
    const b = await startSequencer("B");
    await new Promise((r) => setTimeout(r, SESSION_TIMEOUT_MS + 8_000)); // B takes over and works
    a.kill("SIGCONT"); // the zombie wakes up with a stale head cache
    await new Promise((r) => setTimeout(r, 8_000));
    producing = false;
    await load;
    await producer.disconnect();

    // Wait until every distinct send is sequenced.
    const client = new cassandra.Client({
      contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
      localDataCenter: "datacenter1",
      keyspace,
    });
    const distinct = new Set(sent.map((s) => `${s.conversationId}/${s.clientMsgId}`));
    const deadline = Date.now() + 120_000;
    let assignments: Array<{ conversationId: string; dedupeKey: string; seq: number; messageId: string }> =
      [];
    for (;;) {
      const rows = await client.execute(
        "SELECT conversation_id, dedupe_key, seq, message_id FROM conversation_sequencer",
      );
      assignments = rows.rows
        // Not the static-only rows, nor the row written with each head (dedupe key '').
        .filter((r) => r.get("dedupe_key") !== null && r.get("dedupe_key") !== "")
        .map((r) => ({
          conversationId: r.get("conversation_id") as string,
          dedupeKey: r.get("dedupe_key") as string,
          seq: Number(r.get("seq")),
          messageId: r.get("message_id") as string,
        }));
      if (assignments.length >= distinct.size || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(assignments.length).toBe(distinct.size);

    for (const conversationId of conversations) {
      const mine = assignments.filter((x) => x.conversationId === conversationId);
      const seqs = mine.map((x) => x.seq).sort((p, q) => p - q);
      // Gap-free and never twice.
      expect(seqs).toEqual(Array.from({ length: mine.length }, (_, i) => i + 1));
      // Each stored row is the message its assignment names.
      const rows = await client.execute(
        "SELECT seq, message_id FROM messages_by_conversation WHERE conversation_id = ? AND bucket = 0",
        [conversationId],
        {
          prepare: true,
        },
      );
      const stored = new Map(rows.rows.map((r) => [Number(r.get("seq")), r.get("message_id") as string]));
      for (const x of mine) expect(stored.get(x.seq)).toBe(x.messageId);
    }
    // A message id is assigned at most once.
    const ids = assignments.map((x) => x.messageId);
    expect(new Set(ids).size).toBe(ids.length);
    await client.shutdown();

    // Every sequenced record (re-emissions included) agrees with the assignment.
    const bySeq = new Map(assignments.map((x) => [`${x.conversationId}/${x.seq}`, x.messageId]));
    const consumer = kafka.consumer({ groupId: `fence-check-${id}` });
    await consumer.connect();
    await consumer.subscribe({ topic: names.sequenced, fromBeginning: true });
    const seen = new Set<string>();
    let conflicts = 0;
    let records = 0;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 60_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          const m = decodeMessage(message.value!);
          records++;
          const key = `${m.conversationId}/${m.seq}`;
          if (bySeq.get(key) !== m.messageId) conflicts++;
          seen.add(key);
          if (seen.size === bySeq.size) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
    await consumer.disconnect();
    console.log(
      `zombie test: ${sent.length} drafts, ${distinct.size} distinct, ${records} sequenced records (re-emissions ${records - seen.size})`,
    );
    expect(conflicts).toBe(0);
    expect(seen.size).toBe(bySeq.size);
    for (const c of [a, b]) c.kill("SIGTERM");
  });
});

describe("zombie sequencer writing after its successor claimed", () => {
  it("its late rows and head lose to the successor's; it acknowledges and emits nothing", async () => {
    const scenario = await openScenario("z", 2);
    const { names, stores, kafka, producer } = scenario;
    const conversations = ["z:1", "z:2", "z:3", "z:4"];
    let n = 0;
    const produce = async (perConversation: number) => {
      for (let k = 0; k < perConversation; k++)
        for (const conversationId of conversations) {
          await produceDraft(producer, names.messages, {
            conversationId,
            sender: "z",
            i: n++,
            idBase: 5_000_000,
          });
        }
    };
    const headsAre = async (want: number, timeoutMs = 60_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const heads = await stores.sequencer.heads(conversations);
        if ([...heads.values()].every((h) => h === want)) return;
        if (Date.now() > deadline) throw new Error(`heads ${JSON.stringify([...heads])}, want ${want}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const claims = new Map<string, bigint[]>();
    const recording = recordingOwnership(stores.ownership, claims);
    const hold = new Hold();
    const producers = new Map<string, BatchProducer>();
    const sequencerProducer = (who: string): BatchProducer => {
      const p = new BatchProducer(() => kafka.producer({ idempotent: true, maxInFlightRequests: 1 }), {
        log: createLogger({ test: `fence-z-producer-${who}` }),
      });
      producers.set(who, p);
      return p;
    };
    const sequencer = (who: string, beforeWrite?: () => Promise<void>) =>
      scenarioSequencer(scenario, {
        producer: sequencerProducer(who),
        ownership: recording(who),
        firstAttemptMarginMs: 60_000,
        log: createLogger({ test: `fence-z-${who}` }),
        ...(beforeWrite ? { beforeWrite } : {}),
      });
    const connectedSequencer = async (s: Sequencer, who: string) => {
      await producers.get(who)!.connect();
      await s.start();
      return s;
    };
    const a = sequencer("A", hold.hook);
    await connectedSequencer(a, "A");
    await produce(5);
    await headsAre(5);

    // A assigns the next drafts (seqs 6..10) and is held before writing them: no heartbeats either.
    hold.arm();
    await produce(5);
    await hold.untilHeld();
    expect(hold.held).toBeGreaterThan(0);

    // B takes over once A's session times out, sequences 6..10 itself and then 11..15.
    const b = sequencer("B");
    await connectedSequencer(b, "B");
    await headsAre(10, SESSION_TIMEOUT_MS + 40_000);
    await produce(5);
    await headsAre(15);
    const successorEpochs = claims.get("B") ?? [];
    expect(successorEpochs.length).toBeGreaterThan(0);
    const zombieEpoch = claims.get("A")![0]!;
    expect(successorEpochs.every((e) => e > zombieEpoch)).toBe(true);

    // A wakes and writes its stale batch (head 10, seqs 6..10) under its old epoch.
    hold.release();
    const fencedBy = Date.now() + 30_000;
    while (a.stats.fenced === 0 && Date.now() < fencedBy) await new Promise((r) => setTimeout(r, 100));
    expect(a.stats.fenced).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 2_000));

    // The heads did not go back to A's 10, and every row is the one the newest owner wrote.
    expect(await stores.sequencer.heads(conversations)).toEqual(new Map(conversations.map((c) => [c, 15])));
    const cql = new cassandra.Client({
      contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
      localDataCenter: "datacenter1",
      keyspace,
    });
    for (const c of conversations) {
      const history = await stores.messages.history(c, { limit: 100 });
      expect(history.messages.map((m) => m.seq)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
      const ids = history.messages.map((m) => Number(m.messageId) - 5_000_000);
      // Drafts were produced round-robin over the conversations: conversation k got k, k+4, k+8...
      expect(ids).toEqual(ids.slice().sort((x, y) => x - y));
      expect(new Set(ids).size).toBe(15);
      const rows = await cql.execute(
        "SELECT seq, WRITETIME(message_id) AS written FROM messages_by_conversation WHERE conversation_id = ? AND bucket = 0",
        [c],
        { prepare: true },
      );
      for (const row of rows.rows) {
        const written = BigInt(String(row.get("written")));
        if (Number(row.get("seq")) > 5) expect(written > zombieEpoch).toBe(true);
      }
      const head = await cql.execute(
        "SELECT WRITETIME(last_seq) AS written FROM conversation_sequencer WHERE conversation_id = ? LIMIT 1",
        [c],
        { prepare: true },
      );
      expect(BigInt(String(head.first().get("written"))) > zombieEpoch).toBe(true);
    }
    await cql.shutdown();

    // The sequenced stream never carries two messages at one (conversation, seq).
    const consumer = kafka.consumer({ groupId: `fence-z-check-${id}` });
    await consumer.connect();
    await consumer.subscribe({ topic: names.sequenced, fromBeginning: true });
    const bySeq = new Map<string, string>();
    let conflicts = 0;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 30_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          const m = decodeMessage(message.value!);
          const key = `${m.conversationId}/${m.seq}`;
          if (bySeq.has(key) && bySeq.get(key) !== m.messageId) conflicts++;
          bySeq.set(key, m.messageId);
          if (bySeq.size === conversations.length * 15) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
    await consumer.disconnect();
    expect(conflicts).toBe(0);
    expect(bySeq.size).toBe(conversations.length * 15);
    await Promise.all([a.close(), b.close(), producer.disconnect()]);
    await Promise.all([...producers.values()].map((p) => p.close()));
    await stores.close();
  });
});

describe("a first attempt whose batch failed after its writes", () => {
  it("is assigned one seq when the batch comes again", async () => {
    const scenario = await openScenario("f", 1);
    const { names, stores, kafka, producer } = scenario;
    const sequencerProducer = new BatchProducer(
      () => kafka.producer({ idempotent: true, maxInFlightRequests: 1 }),
      { log: createLogger({ test: "fence-first-producer" }) },
    );
    await sequencerProducer.connect();
    const conversationId = "f:1";
    let n = 0;
    const produce = async (firstAttempt: boolean) => {
      await produceDraft(producer, names.messages, {
        conversationId,
        sender: "f",
        i: n++,
        idBase: 7_000_000,
        ...(firstAttempt ? { headers: { [FIRST_ATTEMPT_HEADER]: String(Date.now()) } } : {}),
      });
    };
    // The epoch check after the writes fails once (a read timeout, say): not fenced, so kafkajs hands
    // the batch to the same owner again (no rejoin, same claim) while its rows, head and dedupe row
    // are already stored. With its keys remembered only after the check, the first attempt was
    // trusted again and got a second seq.
    let failChecks = 0;
    let checks = 0;
    const ownership: OwnershipStore = {
      claim: (stream, partition, owner) => stores.ownership.claim(stream, partition, owner),
      current: async (stream, partition) => {
        checks++;
        if (failChecks > 0) {
          failChecks--;
          throw new Error("read timed out (test)");
        }
        return stores.ownership.current(stream, partition);
      },
      close: async () => {},
    };
    const sequencer = scenarioSequencer(scenario, {
      producer: sequencerProducer,
      ownership,
      // First attempts are trusted as soon as they come after the claim.
      firstAttemptMarginMs: 0,
      log: createLogger({ test: "fence-f" }),
    });
    const until = async (what: string, done: () => Promise<boolean> | boolean) => {
      const deadline = Date.now() + 30_000;
      while (!(await done())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const head = async () => (await stores.sequencer.heads([conversationId])).get(conversationId);
    try {
      await sequencer.start();
      await produce(false); // the claim
      await until("the first batch's check", () => checks === 1);
      failChecks = 1;
      await produce(true);
      await until("the failed check and the one after it", () => checks === 3);
      await produce(true);
      await until("head 3", async () => (await head()) === 3);
      await new Promise((r) => setTimeout(r, 1_000));
      // The first attempt was trusted once, and found in memory when its batch came again.
      expect(sequencer.dedupeChecks).toEqual({ store: 1, memory: 1, trusted: 2 });
      const history = await stores.messages.history(conversationId, { limit: 10 });
      expect(history.messages.map((m) => [m.seq, m.messageId]).sort()).toEqual([
        [1, "7000000"],
        [2, "7000001"],
        [3, "7000002"],
      ]);
      expect((await stores.sequencer.heads([conversationId])).get(conversationId)).toBe(3);
    } finally {
      await sequencer.close();
      await Promise.all([producer.disconnect(), sequencerProducer.close()]);
      await stores.close();
    }
  });
});
