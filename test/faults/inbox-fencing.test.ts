/**
 * The zombie inbox owner (ADR 0002): an owner of inbox partitions is held until its successor has
 * claimed the partitions and moved on — between assigning cursors and writing them (its check then
 * fails: it must deliver nothing), or after its writes and a passing check, before it delivers.
 * Either way its late writes (a stale head among them) must not win, whatever it delivers must agree
 * with the inbox, and every user's inbox must hold each message exactly once, in order. A record the
 * sequencer marks as a re-delivery adds nothing, and neither does a fenced-out sequencer's late,
 * unmarked copy of a message its successor emitted again (its epoch is older than one known).
 */
import { randomBytes } from "node:crypto";
import cassandra from "cassandra-driver";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CassandraStores } from "../../internal/backends/cassandra/index.js";
import { encodeMessage } from "../../internal/backends/kafka/codec.js";
import {
  DRAFTS_STREAM,
  INBOX_GROUP,
  INBOX_RECIPIENTS_HEADER,
  InboxOwner,
  REDELIVERY_HEADER,
  SEQUENCER_EPOCH_HEADER,
  sequencerEpochHeader,
} from "../../internal/backends/kafka/inbox-owner.js";
import { topicNames } from "../../internal/backends/kafka/topics.js";
import type { InboxDelivery } from "../../internal/backends/types.js";
import { createLogger } from "../../internal/lib/log.js";
import { shardOf } from "../../internal/lib/shard.js";
import { Hold, openOwnersStores, provisionForOwners, recordingOwnership } from "../helpers/owners.js";
import { ensureServer } from "../infra/servers.js";

const id = `${Date.now().toString(36)}${randomBytes(2).toString("hex")}`;
const prefix = `ifence-${id}.`;
const keyspace = `ifence_${id}`;
const PARTITIONS = 2;
const SESSION_TIMEOUT_MS = 10_000;
let infra: Record<string, string>;
let stores: CassandraStores;

beforeAll(async () => {
  infra = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  for (const tag of ["w", "h", "p", "e", "v"])
    await provisionForOwners(
      { env: infra, keyspace },
      { prefix: `${prefix}${tag}.`, partitions: PARTITIONS, test: `ifence-${tag}` },
    );
  stores = await openOwnersStores({ env: infra, keyspace });
});

afterAll(async () => {
  await stores?.close();
});

describe("zombie inbox owner writing after its successor claimed", () => {
  it("held before its writes: its late rows and heads lose, it delivers nothing, every inbox holds each message once", async () => {
    await zombieOwner("write", "w");
  });

  it("held after its writes and a passing check, before it delivers: its heads lose, what it delivers agrees with the inbox", async () => {
    await zombieOwner("handOver", "h");
  });
});

describe("an owner's write that fails after storing some users' rows and heads", () => {
  it("gets every recipient its messages once the batch is retried: handed to the router, or its sessions recheck the inbox that holds them", async () => {
    const { scenario, names, kafka, producer, users, publish } = await openScenario("p");
    const conversationId = `g:p${id}`;
    // The first write stores one user's rows and head, then fails (a timeout after a partial write).
    let failures = 0;
    let stored: { user: string; seqs: number[] } | undefined;
    const inbox = stores.inbox;
    const store = new Proxy(inbox, {
      get(target, prop) {
        if (prop === "writeOwned")
          return async (...args: Parameters<typeof inbox.writeOwned>) => {
            const [entries, heads, before, epoch, ttl, inOneRoundTrip, log] = args;
            if (failures > 0 || entries.length === 0) return target.writeOwned(...args);
            failures++;
            const first = entries[0]!.userId;
            stored = { user: first, seqs: entries.filter((e) => e.userId === first).map((e) => e.seq) };
            await target.writeOwned(
              entries.filter((e) => e.userId === first),
              new Map([[first, heads.get(first)!]]),
              before,
              epoch,
              ttl,
              inOneRoundTrip,
              log,
            );
            throw new Error("write timed out after storing some of it");
          };
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const delivered: InboxDelivery[] = [];
    const rechecked = new Set<string>();
    const owner = new InboxOwner({
      kafka,
      groupId: `${scenario}${INBOX_GROUP}`,
      inboxTopic: names.inbox,
      store,
      ownership: stores.ownership,
      indexTtlSeconds: 3600,
      handler: {
        deliver: async (batch) => {
          delivered.push(...batch);
        },
        membershipChanged: () => undefined,
        recheckInboxes: (userIds) => {
          for (const u of userIds) rechecked.add(u);
        },
      },
      log: createLogger({ test: "ifence-p" }),
    });
    await owner.start();
    for (let s = 1; s <= 3; s++) await publish(messageValue(conversationId, s, 8_000_000, users[0]!));
    const deadline = Date.now() + 60_000;
    // What the failed write stored reaches its user by a recheck of its inbox (the retry finds it
    // applied); everything else is handed to the router.
    const seqsOf = (u: string) =>
      [
        ...new Set([
          ...delivered.filter((d) => d.recipients.some((r) => r.userId === u)).map((d) => d.message.seq),
          ...(stored?.user === u && rechecked.has(u) ? stored.seqs : []),
        ]),
      ].sort();
    while (users.some((u) => seqsOf(u).length < 3) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 200));
    expect(failures).toBe(1);
    expect(stored?.seqs.length).toBeGreaterThan(0);
    expect([...rechecked]).toEqual([stored!.user]);
    for (const u of users) expect(seqsOf(u)).toEqual([1, 2, 3]);
    // Each delivery carries the cursor the inbox holds.
    for (const u of users) {
      const entries = await stores.inbox.read(u, 0, 10);
      expect(entries.map((e) => e.seq)).toEqual([1, 2, 3]);
      for (const d of delivered)
        for (const r of d.recipients.filter((x) => x.userId === u))
          expect(entries[r.cursor - 1]!.seq).toBe(d.message.seq);
    }
    await Promise.all([owner.close(), producer.disconnect()]);
  }, 90_000);
});

describe("a fenced-out sequencer's produce that lands after its successor's re-emission", () => {
  it("adds no second cursor: each (user, conversation, seq) once, in order, also for an owner that never saw the successor's records", async () => {
    const { scenario, names, kafka, producer, users, publish } = await openScenario("e");
    expect(new Set(users.map((u) => shardOf(u, PARTITIONS))).size).toBe(PARTITIONS);
    const conversationId = `g:e${id}`;
    // Sequencer A owned drafts partition 0; B claimed it since (a newer epoch).
    const draftsPartition = 0;
    const epochA = await stores.ownership.claim(DRAFTS_STREAM, draftsPartition, "sequencer-A");
    const epochB = await stores.ownership.claim(DRAFTS_STREAM, draftsPartition, "sequencer-B");
    expect(epochB > epochA).toBe(true);
    /** The inbox records of message `seq` as the sequencer under `epoch` emits them. */
    const emit = (seq: number, epoch: bigint, redelivery = false) =>
      publish(messageValue(conversationId, seq, 9_000_000, users[0]!), [
        {
          [SEQUENCER_EPOCH_HEADER]: sequencerEpochHeader(draftsPartition, epoch),
          ...(redelivery ? { [REDELIVERY_HEADER]: "1" } : {}),
        },
      ]);
    const delivered: InboxDelivery[] = [];
    const owner = (who: string) =>
      new InboxOwner({
        kafka,
        groupId: `${scenario}${INBOX_GROUP}`,
        inboxTopic: names.inbox,
        store: stores.inbox,
        ownership: stores.ownership,
        indexTtlSeconds: 3600,
        handler: {
          deliver: async (batch) => {
            delivered.push(...batch);
          },
          membershipChanged: () => undefined,
        },
        log: createLogger({ test: `ifence-e-${who}` }),
      });
    /** Waits until every user's inbox holds `seq` (records before it in the partition are applied). */
    const applied = async (seq: number) => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const inboxes = await Promise.all(users.map((u) => stores.inbox.read(u, 0, 100)));
        if (inboxes.every((entries) => entries.some((e) => e.seq === seq))) return;
        if (Date.now() > deadline) throw new Error(`seq ${seq} not in every inbox`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const first = owner("1");
    await first.start();
    // A sequenced 1..3 (its produce of 3 stalls); B re-processed 3 (marked) and sequenced 4; then
    // A's retried produce of 3 lands, unmarked; then B's 5.
    await emit(1, epochA);
    await emit(2, epochA);
    await emit(3, epochA);
    await emit(3, epochB, true);
    await emit(4, epochB);
    await applied(4); // the late copy comes in a later batch (within one, the batch's own keys catch it)
    await emit(3, epochA);
    await emit(5, epochB);
    await applied(5);
    await first.close();
    // A new owner of the inbox partitions, which has seen none of B's records: it starts where the
    // first one committed. A's copy of 3 lands once more, then B's 6.
    const second = owner("2");
    await second.start();
    await emit(3, epochA);
    await emit(6, epochB);
    await applied(6);

    for (const u of users) {
      const inbox = await stores.inbox.read(u, 0, 100);
      expect(inbox.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(inbox.map((e) => e.cursor)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(await stores.inbox.head(u)).toBe(6);
      // Handed to the router once per (user, seq), at the cursor the inbox holds.
      const mine = delivered.flatMap((d) =>
        d.recipients.filter((r) => r.userId === u).map((r) => [d.message.seq, r.cursor]),
      );
      expect(mine.map(([seq]) => seq).sort()).toEqual([1, 2, 3, 4, 5, 6]);
      for (const [seq, cursor] of mine) expect(cursor).toBe(seq);
    }
    await Promise.all([second.close(), producer.disconnect()]);
  }, 120_000);
});

describe("a group with an inbox owner of a version before (a rolling upgrade)", () => {
  it("writes heads after their rows while such a member is in it, and in one round trip once it left", async () => {
    const { scenario, names, kafka, producer } = await openScenario("v");
    const groupId = `${scenario}${INBOX_GROUP}`;
    // An owner of a version before: kafkajs's own round-robin assigner, announcing nothing. It reads
    // nothing here (the topic stays empty) and commits nothing.
    const older = kafka.consumer({ groupId, sessionTimeout: 10_000, heartbeatInterval: 1_000 });
    let olderJoined = false;
    older.on(older.events.GROUP_JOIN, () => {
      olderJoined = true;
    });
    await older.connect();
    await older.subscribe({ topic: names.inbox, fromBeginning: true });
    await older.run({ autoCommit: false, eachBatchAutoResolve: false, eachBatch: async () => undefined });
    const until = async (what: string, pred: () => boolean) => {
      const deadline = Date.now() + 60_000;
      while (!pred()) {
        if (Date.now() > deadline) throw new Error(`${what}: not within 60 s`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await until("the older member joins", () => olderJoined);
    const owner = new InboxOwner({
      kafka,
      groupId,
      inboxTopic: names.inbox,
      store: stores.inbox,
      ownership: stores.ownership,
      indexTtlSeconds: 3600,
      handler: { deliver: async () => undefined, membershipChanged: () => undefined },
      log: createLogger({ test: "ifence-v" }),
    });
    await owner.start();
    await until("the owner reads the members of a generation with both", () => owner.membersRead > 0);
    expect(owner.writesInOneRoundTrip).toBe(false);
    await older.disconnect();
    await until(
      "the owner writes in one round trip once the older member left",
      () => owner.writesInOneRoundTrip,
    );
    await Promise.all([owner.close(), producer.disconnect()]);
  }, 120_000);
});

/**
 * A scenario's topics (provisioned in beforeAll), a connected producer, and six users of its own;
 * `publish` sends an inbox record to each partition, addressed to the scenario's users there.
 */
async function openScenario(tag: string) {
  const scenario = `${prefix}${tag}.`;
  const names = topicNames(scenario);
  const kafka = new Kafka({
    clientId: `ifence-${tag}`,
    brokers: infra.KAFKA_BROKERS!.split(","),
    logLevel: logLevel.NOTHING,
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const users = ["ann", "ben", "cat", "dan", "eve", "fay"].map((u) => `${u}-${tag}${id}`);
  /** One record of `value` per entry of `extraHeaders` (added to its headers), a partition's in one request. */
  const publish = async (value: Buffer, extraHeaders: Array<Record<string, string>> = [{}]) => {
    for (let partition = 0; partition < PARTITIONS; partition++) {
      const here = users.filter((u) => shardOf(u, PARTITIONS) === partition);
      const headers = { [INBOX_RECIPIENTS_HEADER]: here.join("\n") };
      await producer.send({
        topic: names.inbox,
        acks: -1,
        messages: extraHeaders.map((extra) => ({ partition, value, headers: { ...headers, ...extra } })),
      });
    }
  };
  return { scenario, names, kafka, producer, users, publish };
}

/** The inbox record's value of a conversation's message `seq`: id `idBase + seq`, body `m<seq>`. */
function messageValue(conversationId: string, seq: number, idBase: number, sender: string): Buffer {
  return encodeMessage({
    conversationId,
    seq,
    messageId: String(idBase + seq),
    sender,
    clientMsgId: `m${seq}`,
    body: `m${seq}`,
    createdAtMs: Date.now(),
  });
}

async function zombieOwner(holdAt: "write" | "handOver", tag: string): Promise<void> {
  const { scenario, names, kafka, producer, users, publish } = await openScenario(tag);
  const conversationId = `g:${tag}${id}`;
  let seq = 0;
  const value = (s: number) => messageValue(conversationId, s, 7_000_000, users[0]!);
  const produce = async (count: number, redeliverSeq?: number) => {
    for (let k = 0; k < count; k++)
      await publish(value(redeliverSeq ?? ++seq), [
        redeliverSeq === undefined ? {} : { [REDELIVERY_HEADER]: "1" },
      ]);
  };
  /** A new message and, in the same produce request, its re-delivery: one fetch batch. */
  const produceWithRedelivery = async (s: number) => {
    seq = Math.max(seq, s);
    await publish(value(s), [{}, { [REDELIVERY_HEADER]: "1" }]);
  };
  // Each partition holds some of the users: each has records to apply.
  expect(new Set(users.map((u) => shardOf(u, PARTITIONS))).size).toBe(PARTITIONS);
  const headsAre = async (want: number, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const heads = await stores.inbox.ownedHeads(users);
      if ([...heads.values()].every((h) => h.head === want)) return;
      if (Date.now() > deadline) throw new Error(`heads ${JSON.stringify([...heads])}, want ${want}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const claims = new Map<string, bigint[]>();
  const recording = recordingOwnership(stores.ownership, claims);
  const delivered = new Map<string, InboxDelivery[]>([
    ["A", []],
    ["B", []],
  ]);
  const hold = new Hold();
  const owner = (who: string, hook?: () => Promise<void>) =>
    new InboxOwner({
      kafka,
      groupId: `${scenario}${INBOX_GROUP}`,
      inboxTopic: names.inbox,
      store: stores.inbox,
      ownership: recording(who),
      indexTtlSeconds: 3600,
      handler: {
        deliver: async (batch) => {
          delivered.get(who)!.push(...batch);
        },
        membershipChanged: () => undefined,
      },
      log: createLogger({ test: `ifence-${who}` }),
      ...(hook && holdAt === "write" ? { beforeWrite: hook } : {}),
      ...(hook && holdAt === "handOver" ? { beforeHandOver: hook } : {}),
    });
  const a = owner("A", hold.hook);
  await a.start();
  await produce(5);
  await headsAre(5);

  hold.arm();
  await produce(5);
  await hold.untilHeld();
  expect(hold.held).toBeGreaterThan(0);
  const deliveredByABeforeRelease = delivered.get("A")!.length;

  const b = owner("B");
  await b.start();
  await headsAre(10, SESSION_TIMEOUT_MS + 40_000);
  await produce(5);
  await headsAre(15);
  // A re-delivery of seq 3 (the sequencer re-processed it) adds no entry, and neither does one that
  // follows its original in the same batch (before the original's index row exists).
  await produce(1, 3);
  await produceWithRedelivery(16);
  await new Promise((r) => setTimeout(r, 2_000));
  const zombieEpoch = claims.get("A")![0]!;
  expect((claims.get("B") ?? []).length).toBeGreaterThan(0);
  expect(claims.get("B")!.every((e) => e > zombieEpoch)).toBe(true);

  hold.release();
  if (holdAt === "write") {
    const fencedBy = Date.now() + 30_000;
    while (a.stats.fenced === 0 && Date.now() < fencedBy) await new Promise((r) => setTimeout(r, 100));
    expect(a.stats.fenced).toBeGreaterThan(0);
  }
  await new Promise((r) => setTimeout(r, 2_000));
  if (holdAt === "write") {
    // A delivered nothing after it was held; what it wrote late did not win.
    expect(
      delivered
        .get("A")!
        .slice(deliveredByABeforeRelease)
        .filter((d) => d.message.seq > 5),
    ).toEqual([]);
  } else {
    // A's check had passed and its writes were stored: it delivers what it held, late; below, its
    // heads lose to B's and its deliveries carry the cursors the inbox holds.
    expect(
      delivered
        .get("A")!
        .slice(deliveredByABeforeRelease)
        .some((d) => d.message.seq > 5),
    ).toBe(true);
  }
  await headsAre(16, 5_000);
  const cql = new cassandra.Client({
    contactPoints: infra.CASSANDRA_CONTACT_POINTS!.split(","),
    localDataCenter: "datacenter1",
    keyspace,
  });
  for (const u of users) {
    const inbox = await stores.inbox.read(u, 0, 100);
    expect(inbox.map((e) => e.seq)).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    expect(inbox.map((e) => e.cursor)).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    expect(await stores.inbox.head(u)).toBe(16);
    const head = await cql.execute(
      "SELECT WRITETIME(head) AS written FROM inbox_heads WHERE user_id = ? LIMIT 1",
      [u],
      {
        prepare: true,
      },
    );
    expect(BigInt(String(head.first().get("written"))) > zombieEpoch).toBe(true);
    // What was delivered agrees with the inbox: each (user, seq) once, at its cursor.
    const mine = [...delivered.values()]
      .flat()
      .flatMap((d) => d.recipients.filter((r) => r.userId === u).map((r) => [d.message.seq, r.cursor]));
    const bySeq = new Map<number, number>();
    for (const [s, cursor] of mine) {
      expect(bySeq.get(s!) ?? cursor).toBe(cursor);
      bySeq.set(s!, cursor!);
    }
    for (const [s, cursor] of bySeq) expect(inbox[cursor - 1]!.seq).toBe(s);
  }
  await cql.shutdown();
  await Promise.all([a.close(), b.close(), producer.disconnect()]);
}
