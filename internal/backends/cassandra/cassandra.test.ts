/**
 * The Cassandra stores against a real node (test/infra: `bash test/infra/up.sh cassandra`). Never skips:
 * if Cassandra cannot be started, every test fails with up.sh's reason.
 *
 * One keyspace per run of this file (switchboard_test_<random>), dropped at the end. Races between
 * "processes" use two independently opened store sets (two driver clients), so the conditional writes,
 * not in-process queues or mutexes, decide them.
 */
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import cassandra from "cassandra-driver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectNoIdReissuedAfterRestart } from "../../../test/helpers/id-high-water.js";
import { ensureServer } from "../../../test/infra/servers.js";
import { Code, SwitchboardError } from "../../lib/errors.js";
import type { InboxEntry, MembershipAsOfSeqs, NewConversation, StoredMessage } from "../types.js";
import { type CassandraOptions, type CassandraStores, migrate, openCassandraStores } from "./index.js";
import { SCHEMA_VERSION, tableId, withTableId } from "./schema.js";
import { REQUESTS_IN_FLIGHT_MAX, storageError } from "./session.js";
import { routingKey, type Unit } from "./turn-writes.js";

const run = randomBytes(4).toString("hex");
const keyspace = `switchboard_test_${run}`;
const replication = { class: "SimpleStrategy", replication_factor: 1 } as const;
const LONG = 300_000;
/** Short enough to wait out in a test, long enough to survive a stalled CI machine before the first read. */
const TTL_SECONDS = 4;

let options: CassandraOptions;
/** Two store sets on two clients: two "processes". */
let a: CassandraStores;
let b: CassandraStores;
const figures: string[] = [];

beforeAll(async () => {
  const env = await ensureServer("cassandra");
  const contactPoints = env.CASSANDRA_CONTACT_POINTS;
  const localDataCenter = env.CASSANDRA_DATACENTER;
  if (!contactPoints || !localDataCenter)
    throw new Error(`test/infra/up.sh cassandra printed no connection settings: ${JSON.stringify(env)}`);
  options = { contactPoints: contactPoints.split(","), localDataCenter, keyspace, replication };
  a = await openCassandraStores(options);
  b = await openCassandraStores(options);
}, 900_000);

afterAll(async () => {
  if (figures.length > 0) console.log(`cassandra stores, measured:\n  ${figures.join("\n  ")}`);
  await b?.close();
  await a?.close();
  if (options) await dropKeyspaces([keyspace]);
}, 120_000);

/** Drops keyspaces through a client of its own (works even when opening the stores failed). */
async function dropKeyspaces(names: string[]): Promise<void> {
  const client = new cassandra.Client({
    contactPoints: options.contactPoints,
    localDataCenter: options.localDataCenter,
    socketOptions: { readTimeout: 60_000 },
  });
  try {
    for (const name of names) await client.execute(`DROP KEYSPACE IF EXISTS ${name}`);
  } finally {
    await client.shutdown();
  }
}

let ids = 0;
const id = (name: string) => `${name}_${run}_${++ids}`;
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** A deterministic permutation, so a failure reproduces. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed;
  for (let i = out.length - 1; i > 0; i--) {
    state = (state * 1103515245 + 12345) % 2147483648;
    const j = state % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection, the promise resolved");
}

const perSecond = (count: number, ms: number) => Math.round((count * 1000) / Math.max(ms, 1));

// ---------------------------------------------------------------------------------------------
describe("schema migrations", () => {
  it("name the id of each table they create, and only of what they create", () => {
    expect(withTableId("CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY)")).toBe(
      `CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY) WITH ID = '${tableId("ks", "t")}'`,
    );
    expect(
      withTableId(
        "CREATE TABLE IF NOT EXISTS ks.t (k int, c int, PRIMARY KEY (k, c)) WITH CLUSTERING ORDER BY (c DESC)",
      ),
    ).toMatch(/WITH CLUSTERING ORDER BY \(c DESC\) AND ID = '[0-9a-f-]{36}'$/);
    for (const other of [
      "ALTER TABLE ks.t ADD c int",
      "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {}",
    ])
      expect(withTableId(other)).toBe(other);
    // A version-3 UUID, the same every time, another for another keyspace or table.
    expect(tableId("ks", "t")).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
    expect(tableId("ks", "t")).toBe(tableId("ks", "t"));
    expect(new Set([tableId("ks", "t"), tableId("ks2", "t"), tableId("ks", "t2")]).size).toBe(3);
  });

  it(
    "are idempotent: a second run applies nothing; schema_migrations records each version once",
    async () => {
      const ks = `switchboard_test_${run}_m`;
      try {
        const first = await migrate(a.client, { keyspace: ks, replication });
        expect(first.applied).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
        const second = await migrate(a.client, { keyspace: ks, replication });
        expect(second).toEqual({ applied: [], version: 18 });

        const rows = (
          await a.client.execute(`SELECT version, name, checksum, applied_at FROM ${ks}.schema_migrations`)
        ).rows;
        expect(rows.map((r) => r.get("version") as number).sort((x, y) => x - y)).toEqual([
          1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ]);
        for (const r of rows) {
          expect(r.get("name")).toEqual(expect.any(String));
          expect(r.get("checksum")).toMatch(/^[0-9a-f]{16}$/);
          expect(r.get("applied_at")).toBeInstanceOf(Date);
        }
        const tables = (
          await a.client.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            [ks],
            {
              prepare: true,
            },
          )
        ).rows.map((r) => r.get("table_name") as string);
        expect(tables.sort()).toEqual(
          [
            "buckets_by_conversation",
            "conversation_sequencer",
            "conversations_by_user",
            "departures_by_conversation",
            "device_token_owners",
            "devices_by_user",
            "do_not_disturb",
            "id_high_water",
            "inbox_by_user",
            "inbox_heads",
            "inbox_logs",
            "members_by_conversation",
            "messages_by_conversation",
            "muted_conversations",
            "partition_owners",
            "presence",
            "push_dead_letters",
            "receipts",
            "schema_migrations",
          ].sort(),
        );

        // Every table has the id its keyspace and name give it, whoever created it.
        const ids = await a.client.execute(
          "SELECT table_name, id FROM system_schema.tables WHERE keyspace_name = ?",
          [ks],
          { prepare: true },
        );
        for (const r of ids.rows)
          expect(String(r.get("id"))).toBe(tableId(ks, r.get("table_name") as string));

        // Expired dedupe and index rows are purged 3 hours after they expire, not 10 days.
        const graces = await a.client.execute(
          "SELECT table_name, gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ?",
          [ks],
          { prepare: true },
        );
        const grace = new Map(
          graces.rows.map((r) => [r.get("table_name") as string, r.get("gc_grace_seconds")]),
        );
        expect(grace.get("conversation_sequencer")).toBe(10_800);
        expect(grace.get("inbox_heads")).toBe(10_800);
        expect(grace.get("messages_by_conversation")).toBe(864_000);

        // An applied migration whose statements changed is refused, not re-applied.
        await a.client.execute(`UPDATE ${ks}.schema_migrations SET checksum = 'edited' WHERE version = 2`);
        expect(await rejection(migrate(a.client, { keyspace: ks, replication }))).toMatchObject({
          reason: "SCHEMA_MISMATCH",
        });
      } finally {
        await dropKeyspaces([ks]);
      }
    },
    LONG,
  );

  it(
    "run by two processes at once, both finish and every table has one id",
    async () => {
      const ks = `switchboard_test_${run}_c`;
      try {
        const [first, second] = await Promise.all([
          migrate(a.client, { keyspace: ks, replication }),
          migrate(b.client, { keyspace: ks, replication }),
        ]);
        expect(Math.max(first.version, second.version)).toBe(SCHEMA_VERSION);
        // What one of them found done, the other applied: together, every version.
        expect(new Set([...first.applied, ...second.applied]).size).toBe(SCHEMA_VERSION);
        const tables = await b.client.execute(
          "SELECT table_name, id FROM system_schema.tables WHERE keyspace_name = ?",
          [ks],
          { prepare: true },
        );
        expect(tables.rows).toHaveLength(19);
        for (const r of tables.rows)
          expect(String(r.get("id"))).toBe(tableId(ks, r.get("table_name") as string));
        expect(await migrate(a.client, { keyspace: ks, replication })).toEqual({
          applied: [],
          version: SCHEMA_VERSION,
        });
      } finally {
        await dropKeyspaces([ks]);
      }
    },
    LONG,
  );

  it(
    "opening the same keyspace again migrates nothing and sees the data",
    async () => {
      const conversationId = id("reopen");
      await a.sequencer.record(
        [{ conversationId, head: 1, assigned: [{ dedupeKey: "k", seq: 1, messageId: "1" }] }],
        epochAt(1),
        3600,
      );
      const again = await openCassandraStores(options);
      try {
        expect(await again.sequencer.heads([conversationId])).toEqual(new Map([[conversationId, 1]]));
      } finally {
        await again.close();
      }
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("message store", () => {
  const stored = (conversationId: string, seq: number): StoredMessage => ({
    conversationId,
    seq,
    messageId: String(10_000_000_000n + BigInt(seq)),
    sender: seq % 2 === 0 ? "alice" : "bob",
    clientMsgId: `c${seq}`,
    body: `message ${seq} ${"é".repeat(seq % 7)}`,
    createdAtMs: 1_700_000_000_000 + seq,
  });
  const expected = (conversationId: string, from: number, to: number) =>
    range(from, to).map((seq) => stored(conversationId, seq));
  // History paging, getMany, lastSeq and idempotent writes are the backend contract's
  // (test/contract/messages.contract.ts), which runs against this store too.

  it(
    "write throughput (batch writer: per-partition unlogged batches, 64 in flight)",
    async () => {
      const conversations = range(1, 20).map((i) => id(`tput${i}`));
      const rows = conversations.flatMap((c) => expected(c, 1, 1_000));
      const started = performance.now();
      for (let i = 0; i < rows.length; i += 2_000) await a.messages.write(rows.slice(i, i + 2_000));
      const ms = performance.now() - started;
      figures.push(
        `MessageStore.write: ${rows.length} rows (20 conversations, calls of 2,000) in ${Math.round(ms)} ms = ` +
          `${perSecond(rows.length, ms)} rows/s`,
      );
      for (const c of [conversations[0]!, conversations[19]!])
        expect(await a.messages.lastSeq(c)).toBe(1_000);
    },
    LONG,
  );

  it(
    "history never returns a page with a hole below its rows: a batch's rows of seqs 950..999 not landed yet",
    async () => {
      const c = id("hole");
      const seqsOf = (page: { messages: StoredMessage[] }) => page.messages.map((m) => m.seq);
      // The head says 1,049; rows 1..949 and 1,000..1,049 are readable, 950..999 are not (yet).
      await a.sequencer.record([{ conversationId: c, head: 1_049, assigned: [] }], epochAt(1), 3600);
      await a.messages.write([...expected(c, 1, 949), ...expected(c, 1_000, 1_049)], { fence: epochAt(1) });
      // Forward (a follower after 940): up to the hole, never past it.
      let page = await a.messages.history(c, { afterSeq: 940, limit: 100 });
      expect(seqsOf(page)).toEqual(range(941, 949));
      expect(page.hasMore).toBe(true);
      page = await a.messages.history(c, { afterSeq: 949, limit: 100 });
      expect(page).toEqual({ messages: [], hasMore: true });
      // The newest page: never rows whose run, as far as it reads (the page and one row more), has a
      // hole under it; those are left for later and the page is taken below the hole.
      for (const limit of [50, 60, 100]) {
        page = await a.messages.history(c, { limit });
        expect(seqsOf(page)).toEqual(range(950 - limit, 949));
        expect(page.hasMore).toBe(true);
      }
      // A page that reads no hole is whole (a client pages back from it with explicit bounds, below).
      page = await a.messages.history(c, { limit: 10 });
      expect(seqsOf(page)).toEqual(range(1_040, 1_049));
      // Below an explicit bound: from right below it down to the hole, no further.
      page = await a.messages.history(c, { beforeSeq: 1_040, limit: 10 });
      expect(seqsOf(page)).toEqual(range(1_030, 1_039));
      page = await a.messages.history(c, { beforeSeq: 1_005, limit: 10 });
      expect(seqsOf(page)).toEqual(range(1_000, 1_004));
      expect(page.hasMore).toBe(true);
      page = await a.messages.history(c, { beforeSeq: 1_000, limit: 10 });
      expect(page).toEqual({ messages: [], hasMore: true });
      page = await a.messages.history(c, { beforeSeq: 945, limit: 10 });
      expect(seqsOf(page)).toEqual(range(935, 944));
      // Once the rows land, everything reads as usual.
      await a.messages.write(expected(c, 950, 999), { fence: epochAt(1) });
      page = await a.messages.history(c, { afterSeq: 940, limit: 200 });
      expect(seqsOf(page)).toEqual(range(941, 1_049));
      expect(page.hasMore).toBe(false);
      page = await a.messages.history(c, { limit: 100 });
      expect(seqsOf(page)).toEqual(range(950, 1_049));

      // A new conversation whose first rows have not landed: a page that reaches down to the hole
      // shows nothing yet (its rows sit on the hole), and says there is more.
      const fresh = id("hole-fresh");
      await a.sequencer.record([{ conversationId: fresh, head: 100, assigned: [] }], epochAt(1), 3600);
      await a.messages.write(expected(fresh, 51, 100), { fence: epochAt(1) });
      expect(await a.messages.history(fresh, { limit: 200 })).toEqual({ messages: [], hasMore: true });
      page = await a.messages.history(fresh, { beforeSeq: 81, limit: 40 });
      expect(seqsOf(page)).toEqual(range(51, 80));
      expect(page.hasMore).toBe(true);
      expect(await a.messages.history(fresh, { beforeSeq: 51, limit: 40 })).toEqual({
        messages: [],
        hasMore: true,
      });
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("sequencer store and partition ownership", () => {
  const entry = (key: string, seq: number, epoch = "") => ({
    dedupeKey: key,
    seq,
    messageId: `m-${key}${epoch}`,
  });
  const message = (conversationId: string, seq: number, messageId: string): StoredMessage => ({
    conversationId,
    seq,
    messageId,
    sender: "s",
    clientMsgId: messageId,
    body: `body ${messageId}`,
    createdAtMs: 1_790_000_000_000,
  });

  it(
    "record writes heads and dedupe rows of many conversations; heads and lookup read them back in few requests",
    async () => {
      const cs = range(1, 40).map(() => id("seq"));
      const before = { ...a.requests };
      await a.sequencer.record(
        cs.map((c, i) => ({ conversationId: c, head: i + 1, assigned: [entry(`u\u0000k${i}`, i + 1)] })),
        epochAt(1),
        3600,
      );
      const heads = await a.sequencer.heads([...cs, id("none")]);
      expect(cs.map((c) => heads.get(c))).toEqual(range(1, 40));
      expect([...heads.values()].at(-1)).toBe(0);
      // Every conversation asks for its own key and the key of its neighbour: only own rows return.
      const found = await a.sequencer.lookup(
        new Map(cs.map((c, i) => [c, [`u\u0000k${i}`, `u\u0000k${(i + 1) % cs.length}`]])),
      );
      expect(cs.map((c, i) => found.get(c)?.get(`u\u0000k${i}`)?.seq)).toEqual(range(1, 40));
      expect(cs.every((c) => found.get(c)?.size === 1)).toBe(true);
      const spent = {
        writes: a.requests.writes + a.requests.batches - before.writes - before.batches,
        reads: a.requests.reads - before.reads,
        lwts: a.requests.lwts - before.lwts,
      };
      figures.push(
        `SequencerStore: 40 conversations recorded, read and looked up with ${JSON.stringify(spent)} requests`,
      );
      expect(spent.lwts).toBe(0);
      // 40 conversations' rows weigh about 5.6 KB: two batches below the 5 KiB warn threshold.
      expect(spent.writes).toBe(2);
      expect(spent.reads).toBeLessThanOrEqual(4);
    },
    LONG,
  );

  it(
    "writes of several owners asked in the same turn share one request, each row with its owner's epoch",
    async () => {
      const [c1, c2] = [id("turn"), id("turn")];
      const user = id("turn-user");
      const before = a.requests.writes + a.requests.batches;
      await Promise.all([
        a.sequencer.record([{ conversationId: c1, head: 1, assigned: [entry("t1", 1)] }], epochAt(5), 3600),
        a.sequencer.record([{ conversationId: c2, head: 2, assigned: [entry("t2", 2)] }], epochAt(6), 3600),
        a.messages.write([message(c1, 1, "m-t1")], { fence: epochAt(5) }),
        a.inbox.writeOwned(
          [{ userId: user, cursor: 1, conversationId: c1, seq: 1, messageId: "m-t1" }],
          new Map([[user, { head: 1, appliedOffset: 7 }]]),
          new Map(),
          epochAt(7),
          3600,
        ),
      ]);
      // Two requests: in the first turn both heads with their dedupe rows, the new bucket's marker,
      // the inbox's stream rows and its head; in the second the message rows (after their marker).
      expect(a.requests.writes + a.requests.batches - before).toBe(2);
      const writeTimes: Array<[string, string, bigint]> = [
        [
          `WRITETIME(last_seq) AS t FROM ${keyspace}.conversation_sequencer WHERE conversation_id = ? LIMIT 1`,
          c1,
          epochAt(5),
        ],
        [
          `WRITETIME(last_seq) AS t FROM ${keyspace}.conversation_sequencer WHERE conversation_id = ? LIMIT 1`,
          c2,
          epochAt(6),
        ],
        [
          `WRITETIME(message_id) AS t FROM ${keyspace}.messages_by_conversation WHERE conversation_id = ? AND bucket = 0 AND seq = 1`,
          c1,
          epochAt(5),
        ],
        [`WRITETIME(head) AS t FROM ${keyspace}.inbox_heads WHERE user_id = ? LIMIT 1`, user, epochAt(7)],
      ];
      for (const [query, key, epoch] of writeTimes) {
        const row = (await a.client.execute(`SELECT ${query}`, [key], { prepare: true })).first();
        expect(BigInt(String(row?.get("t")))).toBe(epoch);
      }
      expect((await a.sequencer.heads([c1, c2])).get(c2)).toBe(2);
      expect((await a.inbox.read(user, 0, 10)).map((e) => e.messageId)).toEqual(["m-t1"]);
    },
    LONG,
  );

  it(
    "the turn writes' routing keys are the partitions' own: the driver hashes them to the node's tokens",
    async () => {
      const c = id("route");
      const user = id("route-user");
      await a.messages.write([message(c, 2_001, "m-route")]);
      await a.inbox.writeOwned(
        [{ userId: user, cursor: 1, conversationId: c, seq: 2_001, messageId: "m-route" }],
        new Map([[user, { head: 1, appliedOffset: 1 }]]),
        new Map(),
        epochAt(1),
        3600,
      );
      const tokenizer = (
        a.client.metadata as unknown as {
          tokenizer: { hash(key: Buffer): { getValue(): { toString(): string } } };
        }
      ).tokenizer;
      const driverToken = (key: Buffer) => tokenizer.hash(key).getValue().toString();
      const nodeToken = async (query: string, params: unknown[]) =>
        String((await a.client.execute(query, params, { prepare: true })).first()?.get("t"));
      expect(driverToken(routingKey(c, 2))).toBe(
        await nodeToken(
          `SELECT token(conversation_id, bucket) AS t FROM ${keyspace}.messages_by_conversation WHERE conversation_id = ? AND bucket = 2`,
          [c],
        ),
      );
      expect(driverToken(routingKey(user, 0))).toBe(
        await nodeToken(
          `SELECT token(user_id, bucket) AS t FROM ${keyspace}.inbox_by_user WHERE user_id = ? AND bucket = 0`,
          [user],
        ),
      );
      expect(driverToken(routingKey(user))).toBe(
        await nodeToken(`SELECT token(user_id) AS t FROM ${keyspace}.inbox_heads WHERE user_id = ? LIMIT 1`, [
          user,
        ]),
      );
    },
    LONG,
  );

  it(
    "lookups asked in the same turn share one read, and each caller gets only what it asked for",
    async () => {
      const cs = range(0, 5).map(() => id("gather"));
      const key = (i: number) => `u\u0000g${i}`;
      await a.sequencer.record(
        cs.map((c, i) => ({ conversationId: c, head: 1, assigned: [entry(key(i), 1)] })),
        epochAt(1),
        3600,
      );
      const before = a.requests.reads;
      // Each caller also asks for keys that exist in the other caller's conversations.
      const [first, second] = await Promise.all([
        a.sequencer.lookup(new Map(cs.slice(0, 3).map((c, i) => [c, [key(i), key(i + 3)]]))),
        a.sequencer.lookup(new Map(cs.slice(3).map((c, i) => [c, [key(i + 3), key(i)]]))),
      ]);
      expect(a.requests.reads - before).toBe(1);
      expect([...first].map(([c, refs]) => [c, [...refs.keys()]])).toEqual(
        cs.slice(0, 3).map((c, i) => [c, [key(i)]]),
      );
      expect([...second].map(([c, refs]) => [c, [...refs.keys()]])).toEqual(
        cs.slice(3).map((c, i) => [c, [key(i + 3)]]),
      );
    },
    LONG,
  );

  it(
    "a fenced-out owner's late writes lose to its successor's, whatever the order; readers stop at the head",
    async () => {
      const c = id("zombie");
      const older = epochAt(1);
      const newer = epochAt(2);
      // The successor (newer epoch) sequences 1..3 first; the zombie's stale batch (1..5) lands after.
      await a.sequencer.record(
        [
          {
            conversationId: c,
            head: 3,
            assigned: [entry("k1", 1, "new"), entry("k2", 2, "new"), entry("k3", 3, "new")],
          },
        ],
        newer,
        3600,
      );
      await a.messages.write(
        range(1, 3).map((seq) => message(c, seq, `new${seq}`)),
        { fence: newer },
      );
      await b.sequencer.record(
        [{ conversationId: c, head: 5, assigned: range(1, 5).map((seq) => entry(`k${seq}`, seq, "old")) }],
        older,
        3600,
      );
      await b.messages.write(
        range(1, 5).map((seq) => message(c, seq, `old${seq}`)),
        { fence: older },
      );

      expect(await a.sequencer.heads([c])).toEqual(new Map([[c, 3]]));
      const refs = (await a.sequencer.lookup(new Map([[c, range(1, 5).map((seq) => `k${seq}`)]]))).get(c)!;
      expect(range(1, 3).map((seq) => refs.get(`k${seq}`)?.messageId)).toEqual([
        "m-k1new",
        "m-k2new",
        "m-k3new",
      ]);
      // The zombie's rows at 4 and 5 exist but lie above the head: no reader shows them.
      expect(
        (await a.messages.getMany(range(1, 5).map((seq) => ({ conversationId: c, seq })))).map(
          (m) => m.messageId,
        ),
      ).toEqual(["new1", "new2", "new3", "old4", "old5"]);
      expect(await a.messages.lastSeq(c)).toBe(3);
      expect((await a.messages.history(c, { limit: 10 })).messages.map((m) => m.messageId)).toEqual([
        "new1",
        "new2",
        "new3",
      ]);
      expect(
        (await a.messages.history(c, { afterSeq: 2, limit: 10 })).messages.map((m) => m.messageId),
      ).toEqual(["new3"]);

      // The successor goes on at 4 and 5: its rows replace the leftovers.
      await a.sequencer.record(
        [{ conversationId: c, head: 5, assigned: [entry("k6", 4, "new"), entry("k7", 5, "new")] }],
        newer,
        3600,
      );
      await a.messages.write([message(c, 4, "new4"), message(c, 5, "new5")], { fence: newer });
      expect((await a.messages.history(c, { limit: 10 })).messages.map((m) => m.messageId)).toEqual(
        range(1, 5).map((seq) => `new${seq}`),
      );
    },
    LONG,
  );

  it(
    "dedupe rows expire after the dedupe window; the head stays",
    async () => {
      const c = id("ttl");
      await a.sequencer.record(
        [{ conversationId: c, head: 1, assigned: [entry("k", 1)] }],
        epochAt(1),
        TTL_SECONDS,
      );
      expect((await a.sequencer.lookup(new Map([[c, ["k"]]]))).get(c)?.get("k")).toEqual({
        seq: 1,
        messageId: "m-k",
      });
      await new Promise((r) => setTimeout(r, (TTL_SECONDS + 1) * 1000));
      expect((await a.sequencer.lookup(new Map([[c, ["k"]]]))).get(c)).toBeUndefined();
      expect(await a.sequencer.heads([c])).toEqual(new Map([[c, 1]]));
    },
    LONG,
  );

  it(
    "claims give every claimant a higher epoch; current names the newest; racing claims never share one",
    async () => {
      const stream = id("stream");
      expect(await a.ownership.current(stream, 0)).toBeUndefined();
      const first = await a.ownership.claim(stream, 0, "a");
      const second = await b.ownership.claim(stream, 0, "b");
      expect(second > first).toBe(true);
      expect(await a.ownership.current(stream, 0)).toBe(second);
      expect(await a.ownership.current(stream, 1)).toBeUndefined();
      const racing = await Promise.all(
        range(1, 6).map((i) => (i % 2 ? a : b).ownership.claim(stream, 0, `r${i}`)),
      );
      expect(new Set(racing).size).toBe(6);
      expect(racing.every((e) => e > second)).toBe(true);
      const newest = [...racing].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)).at(-1);
      expect(await b.ownership.current(stream, 0)).toBe(newest);
    },
    LONG,
  );

  it(
    "checks asked together share one read; a check asked after a claim sees it, even with a read in flight",
    async () => {
      const stream = id("stream");
      const partitions = range(0, 8);
      const first = await Promise.all(partitions.map((p) => a.ownership.claim(stream, p, "a")));
      const readsBefore = a.requests.reads;
      const together = await Promise.all(partitions.map((p) => a.ownership.current(stream, p)));
      expect(together).toEqual(first);
      expect(a.requests.reads - readsBefore).toBe(1);

      // Each partition: claimed anew by b, then checked by a while a's checks of the others (and their
      // shared reads) are under way. Every check must name b's claim.
      const claimedThenChecked = await Promise.all(
        partitions.map(async (p) => {
          await new Promise((r) => setTimeout(r, p * 3));
          const claimed = await b.ownership.claim(stream, p, "b");
          return { claimed, seen: await a.ownership.current(stream, p) };
        }),
      );
      for (const { claimed, seen } of claimedThenChecked) expect(seen).toBe(claimed);
      expect(claimedThenChecked.every(({ claimed }, p) => claimed > first[p]!)).toBe(true);
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("head reads next to expired rows", () => {
  /**
   * Runs `read` with every request of store set `a` traced, and returns what the node says each read
   * went through ("Read N live rows and M tombstone cells").
   */
  async function traced(read: () => Promise<unknown>): Promise<string[]> {
    const client = a.client as unknown as { execute: (...args: unknown[]) => Promise<unknown> };
    const execute = client.execute;
    const sessions: string[] = [];
    client.execute = async (query: unknown, params: unknown, options: unknown) => {
      const traced = { ...(options as object), traceQuery: true };
      const result = (await execute.call(a.client, query, params, traced)) as {
        info: { traceId?: { toString(): string } };
      };
      if (result.info.traceId) sessions.push(result.info.traceId.toString());
      return result;
    };
    try {
      await read();
    } finally {
      client.execute = execute;
    }
    const out: string[] = [];
    for (const session of sessions) {
      // Trace events are written after the answer: wait for the read's summary line.
      for (let attempt = 0; attempt < 50; attempt++) {
        const events = await a.client.execute(
          "SELECT activity FROM system_traces.events WHERE session_id = ?",
          [cassandra.types.Uuid.fromString(session)],
          { prepare: true },
        );
        const summary = events.rows
          .map((r) => r.get("activity") as string)
          .filter((x) => /live rows and \d+ tombstone/.test(x));
        if (summary.length > 0) {
          out.push(...summary);
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return out;
  }
  const tombstonesIn = (summaries: string[]) =>
    summaries.map((x) => Number(/and (\d+) tombstone/.exec(x)![1]));
  const EXPIRED = 400;

  it(
    "a conversation's head is read without passing its expired dedupe rows",
    async () => {
      const c = id("expired");
      // The dedupe rows of many messages, all expired by the time the head is read again.
      for (let i = 0; i < EXPIRED; i += 100)
        await a.sequencer.record(
          [
            {
              conversationId: c,
              head: i + 100,
              assigned: range(i + 1, i + 100).map((seq) => ({
                dedupeKey: `bot\u0000k${seq}`,
                seq,
                messageId: `m${seq}`,
              })),
            },
          ],
          epochAt(1),
          1,
        );
      await new Promise((r) => setTimeout(r, 2_500));
      expect(await a.sequencer.lookup(new Map([[c, ["bot\u0000k1"]]]))).toEqual(new Map());
      const summaries = await traced(async () => {
        expect(await a.sequencer.heads([c])).toEqual(new Map([[c, EXPIRED]]));
        expect(await a.messages.lastSeq(c)).toBe(EXPIRED);
      });
      expect(summaries.length).toBe(2);
      expect(tombstonesIn(summaries)).toEqual([0, 0]);
    },
    LONG,
  );

  it(
    "a user's inbox head is read without passing the user's expired index rows",
    async () => {
      const [u, c] = [id("expired-user"), id("expired-c")];
      for (let i = 0; i < EXPIRED; i += 100) {
        const entries = range(i + 1, i + 100).map((n) => ownedEntry(u, c, n));
        await a.inbox.writeOwned(
          entries,
          new Map([[u, { head: i + 100, appliedOffset: i + 99 }]]),
          new Map(),
          epochAt(1),
          1,
        );
      }
      await new Promise((r) => setTimeout(r, 2_500));
      expect(await a.inbox.recorded([{ userId: u, conversationId: c, seq: 1 }])).toEqual(new Map());
      const summaries = await traced(async () => {
        expect(await a.inbox.ownedHeads([u])).toEqual(
          new Map([[u, { head: EXPIRED, appliedOffset: EXPIRED - 1 }]]),
        );
      });
      expect(tombstonesIn(summaries)).toEqual([0]);
      // The stream rows (no TTL) are all there; the head read of a page passes nothing either.
      const page = await traced(async () => {
        expect((await a.inbox.read(u, EXPIRED - 2, 10)).map((e) => e.cursor)).toEqual([EXPIRED - 1, EXPIRED]);
      });
      expect(tombstonesIn(page).every((n) => n === 0)).toBe(true);
    },
    LONG,
  );
});

/** An inbox entry as an owner writes it, for a user whose entries are all of one conversation: seq = cursor. */
function ownedEntry(userId: string, conversationId: string, cursor: number): InboxEntry {
  return { userId, cursor, conversationId, seq: cursor, messageId: `m${cursor}` };
}

/** A write timestamp `n` seconds after a fixed point, as an owner's epoch (µs). */
function epochAt(n: number): bigint {
  return (1_790_000_000_000n + BigInt(n) * 1000n) * 1000n;
}

// ---------------------------------------------------------------------------------------------
describe("inbox store", () => {
  const entry = (userId: string, conversationId: string, seq: number): Omit<InboxEntry, "cursor"> => ({
    userId,
    conversationId,
    seq,
    messageId: `${conversationId}/${seq}`,
  });

  it(
    "owner path: rows with their heads at the owner's epoch, in one request; a fenced-out owner's late writes lose; reads stop at the head",
    async () => {
      const [u, v, c] = [id("u"), id("v"), id("c")];
      const owned = (userId: string, cursor: number, seq: number, tag: string): InboxEntry => ({
        userId,
        cursor,
        conversationId: c,
        seq,
        messageId: `${tag}${seq}`,
      });
      expect(await a.inbox.ownedHeads([u, v])).toEqual(
        new Map([
          [u, { head: 0, appliedOffset: -1 }],
          [v, { head: 0, appliedOffset: -1 }],
        ]),
      );
      const before = { ...a.requests };
      // The successor writes cursors 1..3 for u (and 1 for v) first; the zombie's stale batch lands after.
      await a.inbox.writeOwned(
        [...range(1, 3).map((n) => owned(u, n, n, "new")), owned(v, 1, 1, "new")],
        new Map([
          [u, { head: 3, appliedOffset: 10 }],
          [v, { head: 1, appliedOffset: 10 }],
        ]),
        new Map(),
        epochAt(2),
        3600,
      );
      expect(a.requests.lwts - before.lwts).toBe(0);
      expect(a.requests.batches + a.requests.writes - before.batches - before.writes).toBe(1);
      await b.inbox.writeOwned(
        range(1, 5).map((n) => owned(u, n, n + 10, "old")),
        new Map([[u, { head: 5, appliedOffset: 8 }]]),
        new Map(),
        epochAt(1),
        3600,
      );
      expect((await a.inbox.ownedHeads([u])).get(u)).toEqual({ head: 3, appliedOffset: 10 });
      expect(await a.inbox.head(u)).toBe(3);
      expect((await a.inbox.read(u, 0, 100)).map((e) => e.messageId)).toEqual(["new1", "new2", "new3"]);
      expect((await a.inbox.read(v, 0, 100)).map((e) => e.messageId)).toEqual(["new1"]);
      // Re-deliveries are answered by the index rows.
      const recorded = await a.inbox.recorded([
        { userId: u, conversationId: c, seq: 2 },
        { userId: u, conversationId: c, seq: 4 },
        { userId: v, conversationId: c, seq: 1 },
      ]);
      expect(recorded).toEqual(
        new Map([
          [`${u}\u0000${c}\u00002`, 2],
          [`${v}\u0000${c}\u00001`, 1],
        ]),
      );
    },
    LONG,
  );

  it(
    "owner path: a head stored without its batch's rows gives way to the one before it; its index rows count only up to the head",
    async () => {
      const c = id("c");
      const store = a.inbox as unknown as {
        s: { turnWrites: { write(what: string, units: Unit[]): Promise<void> } };
        rowUnits(entries: InboxEntry[], at: unknown): Unit[];
        headUnit(
          user: string,
          h: unknown,
          before: unknown,
          entries: InboxEntry[],
          at: unknown,
          ttl: number,
        ): Unit;
      };
      const at = cassandra.types.Long.fromString(String(epochAt(2)));
      // The batch's rows in the bucket of its head land, or those in the bucket before; never both.
      for (const landing of ["upper", "lower"] as const) {
        const u = id(`partial-${landing}`);
        const owned = (cursor: number) => ownedEntry(u, c, cursor);
        // A first batch, all stored: cursors 1..998.
        const h1 = { head: 998, appliedOffset: 997 };
        await a.inbox.writeOwned(range(1, 998).map(owned), new Map([[u, h1]]), new Map(), epochAt(1), 3600);
        expect((await a.inbox.ownedHeads([u])).get(u)).toEqual(h1);
        // The next batch (999..1003, across the bucket's end) fails part-way: its head unit lands
        // with one bucket's rows; its owner is gone, or retries.
        const second = range(999, 1003).map(owned);
        const h2 = { head: 1003, appliedOffset: 1002 };
        const [lower, upper] = store.rowUnits(second, at);
        const head = store.headUnit(u, h2, h1, second, at, 3600);
        await store.s.turnWrites.write("a partial write", [head, landing === "upper" ? upper! : lower!]);
        expect((await a.inbox.ownedHeads([u])).get(u)).toEqual(h1);
        // Its index rows are there, above the head the owner works from.
        const found = await a.inbox.recorded([{ userId: u, conversationId: c, seq: 1001 }]);
        expect(found.get(`${u}\u0000${c}\u00001001`)).toBe(1001);
        // The owner writes the batch again: now it stands.
        await a.inbox.writeOwned(second, new Map([[u, h2]]), new Map([[u, h1]]), epochAt(2), 3600);
        expect((await a.inbox.ownedHeads([u])).get(u)).toEqual(h2);
        expect((await a.inbox.read(u, 990, 100)).map((e) => e.cursor)).toEqual(range(991, 1003));
      }
    },
    LONG,
  );

  it("owner path: applied offsets are of the log they were written for; another log reads none, the head stays", async () => {
    const [u, w, c] = [id("logs"), id("unnamed"), id("c")];
    const owned = (userId: string, cursor: number) => ownedEntry(userId, c, cursor);
    const h1 = { head: 2, appliedOffset: 41 };
    await a.inbox.writeOwned(
      [owned(u, 1), owned(u, 2)],
      new Map([[u, h1]]),
      new Map(),
      epochAt(1),
      3600,
      true,
      "old.inbox",
    );
    expect((await a.inbox.ownedHeads([u], "old.inbox")).get(u)).toEqual(h1);
    // The keyspace restored beside fresh topics: the old log's offsets are no positions in the new one.
    expect((await a.inbox.ownedHeads([u], "new.inbox")).get(u)).toEqual({ head: 2, appliedOffset: -1 });
    // The new log's owner goes on from the head, and its offsets are the new log's from then on.
    const h2 = { head: 3, appliedOffset: 0 };
    await a.inbox.writeOwned(
      [owned(u, 3)],
      new Map([[u, h2]]),
      new Map([[u, h1]]),
      epochAt(2),
      3600,
      true,
      "new.inbox",
    );
    expect((await a.inbox.ownedHeads([u], "new.inbox")).get(u)).toEqual(h2);
    expect((await a.inbox.ownedHeads([u], "old.inbox")).get(u)).toEqual({ head: 3, appliedOffset: -1 });
    // A head written without a log's name (a version before) is of the log the keyspace served first.
    await a.inbox.writeOwned(
      [owned(w, 1)],
      new Map([[w, { head: 1, appliedOffset: 7 }]]),
      new Map(),
      epochAt(1),
      3600,
    );
    expect((await a.inbox.ownedHeads([w], "new.inbox")).get(w)).toEqual({ head: 1, appliedOffset: 7 });
    expect((await a.inbox.ownedHeads([w], "new.inbox", "old.inbox")).get(w)).toEqual({
      head: 1,
      appliedOffset: -1,
    });
    // That log is recorded once, by the first to ask.
    const served = await a.inbox.firstLog(`first-${id("log")}.inbox`);
    expect(await b.inbox.firstLog("another.inbox")).toBe(served);
  });

  it(
    "owner path: a user's burst over several buckets goes out with its head in one turn, believed once every row is there",
    async () => {
      const [u, v, c] = [id("burst"), id("calm"), id("c")];
      const owned = (userId: string, cursor: number) => ownedEntry(userId, c, cursor);
      const burst = range(1, 2_002).map((n) => owned(u, n));
      const heads = new Map([
        [u, { head: 2_002, appliedOffset: 2_001 }],
        [v, { head: 1, appliedOffset: 2_001 }],
      ]);
      const before = new Map([
        [u, { head: 0, appliedOffset: -1 }],
        [v, { head: 0, appliedOffset: -1 }],
      ]);
      const sent = a.requests.batches + a.requests.writes;
      await a.inbox.writeOwned([...burst, owned(v, 1)], heads, before, epochAt(3), 3600);
      // u's three buckets and its head unit each alone (above the batch limits); v's row and head together.
      expect(a.requests.batches + a.requests.writes - sent).toBe(5);
      expect((await a.inbox.read(u, 0, 3_000)).map((e) => e.cursor)).toEqual(range(1, 2_002));
      expect(await a.inbox.ownedHeads([u, v])).toEqual(heads);
      // A middle bucket lost: the head gives way to the one before the batch.
      await a.client.execute(`DELETE FROM ${keyspace}.inbox_by_user WHERE user_id = ? AND bucket = 1`, [u], {
        prepare: true,
      });
      expect((await a.inbox.ownedHeads([u])).get(u)).toEqual({ head: 0, appliedOffset: -1 });
    },
    LONG,
  );

  it(
    "owner path: index rows expire after their TTL; heads and stream rows stay",
    async () => {
      const [u, c] = [id("u"), id("c")];
      await a.inbox.writeOwned(
        [{ userId: u, cursor: 1, conversationId: c, seq: 1, messageId: "m1" }],
        new Map([[u, { head: 1, appliedOffset: 0 }]]),
        new Map(),
        epochAt(1),
        TTL_SECONDS,
      );
      expect((await a.inbox.recorded([{ userId: u, conversationId: c, seq: 1 }])).size).toBe(1);
      await new Promise((r) => setTimeout(r, (TTL_SECONDS + 1) * 1000));
      expect((await a.inbox.recorded([{ userId: u, conversationId: c, seq: 1 }])).size).toBe(0);
      expect((await a.inbox.read(u, 0, 10)).map((e) => e.messageId)).toEqual(["m1"]);
      expect(await a.inbox.head(u)).toBe(1);
    },
    LONG,
  );

  it(
    "assigns per-user cursors in order, idempotently per (user, conversation, seq)",
    async () => {
      const [u, v, c1, c2] = [id("u"), id("v"), id("c1"), id("c2")];
      const first = await a.inbox.append([
        entry(u, c1, 1),
        entry(v, c1, 1),
        entry(u, c1, 2),
        entry(u, c2, 1),
      ]);
      expect(first.map((e) => [e.userId, e.cursor])).toEqual([
        [u, 1],
        [v, 1],
        [u, 2],
        [u, 3],
      ]);
      const again = await b.inbox.append([
        entry(u, c1, 2),
        entry(u, c2, 2),
        entry(u, c1, 1),
        entry(u, c2, 2),
      ]);
      expect(again).toEqual([
        { ...entry(u, c1, 2), cursor: 2 },
        { ...entry(u, c2, 2), cursor: 4 },
        { ...entry(u, c1, 1), cursor: 1 },
        { ...entry(u, c2, 2), cursor: 4 },
      ]);
      expect(await a.inbox.head(u)).toBe(4);
      expect(await a.inbox.head(v)).toBe(1);
      expect(await a.inbox.head(id("nobody"))).toBe(0);
      expect(await a.inbox.read(u, 0, 100)).toEqual(
        [entry(u, c1, 1), entry(u, c1, 2), entry(u, c2, 1), entry(u, c2, 2)].map((e, i) => ({
          ...e,
          cursor: i + 1,
        })),
      );
      expect((await a.inbox.read(u, 2, 1)).map((e) => e.cursor)).toEqual([3]);
      expect(await a.inbox.read(u, 4, 10)).toEqual([]);
    },
    LONG,
  );

  it(
    "reads across the inbox bucket boundary",
    async () => {
      const [u, c] = [id("u"), id("c")];
      await a.inbox.append(range(1, 1_050).map((seq) => entry(u, c, seq)));
      expect(await a.inbox.head(u)).toBe(1_050);
      expect((await a.inbox.read(u, 995, 10)).map((e) => e.cursor)).toEqual(range(996, 1_005));
      expect((await a.inbox.read(u, 1_000, 3)).map((e) => e.cursor)).toEqual([1_001, 1_002, 1_003]);
      const all: InboxEntry[] = [];
      for (let after = 0; ; ) {
        const page = await a.inbox.read(u, after, 300);
        if (page.length === 0) break;
        all.push(...page);
        after = page.at(-1)!.cursor;
      }
      expect(all).toEqual(range(1, 1_050).map((seq) => ({ ...entry(u, c, seq), cursor: seq })));
    },
    LONG,
  );

  it(
    "two appenders racing for one user: gap-free cursors, each entry exactly one",
    async () => {
      const [u, c1, c2] = [id("u"), id("c1"), id("c2")];
      const distinct = range(1, 60).map((i) => entry(u, i % 2 ? c1 : c2, i));
      // Both appenders get every entry (in different orders, single-entry calls, all at once).
      const calls = [
        ...shuffled(distinct, 7).map((e) => () => a.inbox.append([e])),
        ...shuffled(distinct, 11).map((e) => () => b.inbox.append([e])),
      ];
      const started = performance.now();
      const results = (await Promise.all(shuffled(calls, 5).map((call) => call()))).flat();
      const ms = performance.now() - started;
      figures.push(`InboxStore race: 2 appenders x 60 entries for one user in ${Math.round(ms)} ms`);

      const cursorOf = new Map<string, number>();
      for (const r of results) {
        const key = `${r.conversationId}/${r.seq}`;
        const known = cursorOf.get(key);
        if (known !== undefined) expect(r.cursor, key).toBe(known);
        cursorOf.set(key, r.cursor);
      }
      expect([...cursorOf.values()].sort((x, y) => x - y)).toEqual(range(1, 60));
      expect(await a.inbox.head(u)).toBe(60);
      const read = await b.inbox.read(u, 0, 1_000);
      expect(read.map((e) => e.cursor)).toEqual(range(1, 60));
      for (const e of read) expect(e.cursor).toBe(cursorOf.get(`${e.conversationId}/${e.seq}`));
    },
    LONG,
  );

  it(
    "two appenders interleaving many rounds for one user: gap-free, per-appender order kept",
    async () => {
      const [u, c1, c2] = [id("u"), id("c1"), id("c2")];
      // Each appender sends its own conversation in 30 sequential calls of 2 entries, re-sending the
      // previous call's second entry each time (an at-least-once consumer's re-delivery).
      const appender = async (store: CassandraStores, c: string) => {
        const out: InboxEntry[] = [];
        for (let i = 1; i <= 60; i += 2) {
          const batch = i === 1 ? [] : [entry(u, c, i - 1)];
          batch.push(entry(u, c, i), entry(u, c, i + 1));
          out.push(...(await store.inbox.append(batch)).slice(i === 1 ? 0 : 1));
        }
        return out;
      };
      const conflictsBefore = a.inbox.stats.casConflicts + b.inbox.stats.casConflicts;
      const started = performance.now();
      const [fromA, fromB] = await Promise.all([appender(a, c1), appender(b, c2)]);
      const ms = performance.now() - started;
      const conflicts = a.inbox.stats.casConflicts + b.inbox.stats.casConflicts - conflictsBefore;
      figures.push(
        `InboxStore interleaved: 2 appenders x 30 calls for one user in ${Math.round(ms)} ms ` +
          `(${conflicts} lost CAS rounds retried)`,
      );
      for (const list of [fromA, fromB]) {
        expect(list.map((e) => e.seq)).toEqual(range(1, 60));
        const cursors = list.map((e) => e.cursor);
        expect(cursors).toEqual([...cursors].sort((x, y) => x - y)); // in the order appended
      }
      expect([...fromA, ...fromB].map((e) => e.cursor).sort((x, y) => x - y)).toEqual(range(1, 120));
      const read = await a.inbox.read(u, 0, 1_000);
      expect(read).toEqual([...fromA, ...fromB].sort((x, y) => x.cursor - y.cursor));
      expect(await b.inbox.head(u)).toBe(120);
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("membership store", () => {
  const record = (
    cid: string,
    owner: string,
    createdAtMs = 1000,
  ): NewConversation & Pick<Required<NewConversation>, "postPolicy" | "addPolicy" | "delivery"> => ({
    id: cid,
    kind: "group",
    name: `name of ${cid}`,
    owner,
    open: true,
    createdAtMs,
    postPolicy: "everyone",
    addPolicy: "everyone",
    delivery: "push",
  });

  it(
    "two clients creating one conversation id at once (a keyed CreateGroup retried on two routers) make it once",
    async () => {
      const g = id("g");
      const owner = id("owner");
      const members = [owner, id("m1"), id("m2")];
      // Each attempt as its process would make it: its own creation time.
      const [first, second] = await Promise.all([
        a.membership.createConversation(record(g, owner, 1000), members),
        b.membership.createConversation(record(g, owner, 2000), members),
      ]);
      expect([first.created, second.created].filter(Boolean)).toHaveLength(1);
      // Both answer the one stored, members and every member's list included.
      expect(first.record.createdAtMs).toBe(second.record.createdAtMs);
      expect(await a.membership.members(g)).toEqual(members.slice().sort());
      for (const user of members)
        expect((await b.membership.conversationsOf(user, 10)).map((c) => c.id)).toContain(g);
    },
    LONG,
  );

  it(
    "changes of one group from two clients at once: none undoes another, each gets a version of its own",
    async () => {
      const g = id("g");
      const [owner, x, y] = [id("owner"), id("x"), id("y")];
      await a.membership.createConversation(record(g, owner), [owner, x]);
      // Each client changes fields the other does not: an update writing back what it read would
      // undo the other's change (both answered ok).
      const results = await Promise.all([
        a.membership.updateGroup(g, { name: "renamed" }),
        b.membership.updateGroup(g, { open: false }),
        a.membership.updateGroup(g, { postPolicy: "admins" }),
        b.membership.updateGroup(g, { addPolicy: "admins" }),
        a.membership.setRole(g, x, "admin"),
        b.membership.addMembers(g, [y], 10),
      ]);
      expect(results.map((r) => r.version).sort((p, q) => p - q)).toEqual([2, 3, 4, 5, 6, 7]);
      const stored = await b.membership.getConversation(g);
      expect(stored).toMatchObject({
        name: "renamed",
        open: false,
        postPolicy: "admins",
        addPolicy: "admins",
        memberCount: 3,
        version: 7,
      });
      // The change with the newest version returned the state as stored.
      expect(results.find((r) => r.version === 7)).toEqual(stored);
      expect((await a.membership.memberOf(g, x))?.role).toBe("admin");
    },
    LONG,
  );

  it(
    "the member limit holds under 20 concurrent adds from two clients",
    async () => {
      const g = id("g");
      const owner = id("owner");
      await a.membership.createConversation(record(g, owner), [owner]);
      const users = range(1, 20).map((i) => id(`u${i}`));
      const conflictsBefore = a.membership.stats.casConflicts + b.membership.stats.casConflicts;
      const started = performance.now();
      const settled = await Promise.allSettled(
        users.map((u, i) => (i % 2 ? a : b).membership.addMembers(g, [u], 10)),
      );
      const conflicts = a.membership.stats.casConflicts + b.membership.stats.casConflicts - conflictsBefore;
      figures.push(
        `MembershipStore: 20 concurrent adds (limit 10) from 2 clients in ` +
          `${Math.round(performance.now() - started)} ms (${conflicts} lost CAS rounds retried)`,
      );
      const refused = settled.filter((s) => s.status === "rejected");
      expect(settled.length - refused.length).toBe(9);
      for (const r of refused)
        expect(r.reason).toMatchObject({ code: Code.RESOURCE_EXHAUSTED, reason: "GROUP_FULL" });
      expect((await a.membership.getConversation(g))?.memberCount).toBe(10);
      expect(await b.membership.members(g)).toHaveLength(10);
    },
    LONG,
  );

  it(
    "concurrent adds of the same users from two clients count each user once",
    async () => {
      const g = id("g");
      await a.membership.createConversation(record(g, id("o")), []);
      const users = range(1, 6).map((i) => id(`u${i}`));
      await Promise.all(
        range(1, 8).map((i) => (i % 2 ? a : b).membership.addMembers(g, shuffled(users, i), 100)),
      );
      expect((await a.membership.getConversation(g))?.memberCount).toBe(6);
      expect((await a.membership.members(g)).sort()).toEqual([...users].sort());
    },
    LONG,
  );

  it(
    "create is idempotent; remove, isMember and conversationsOf agree",
    async () => {
      const [g, g2, me, other] = [id("g"), id("g"), id("me"), id("other")];
      const first = await a.membership.createConversation(record(g, me, 2000), [me, other, me]);
      expect(first).toEqual({
        created: true,
        record: { ...record(g, me, 2000), memberCount: 2, version: 1 },
      });
      const results = await Promise.all(
        [a, b, a, b].map((s) => s.membership.createConversation(record(g, other, 5000), [other])),
      );
      for (const r of results) expect(r).toEqual({ created: false, record: first.record });

      await b.membership.createConversation({ ...record(g2, other, 3000), kind: "direct" }, [me, other]);
      expect((await a.membership.conversationsOf(me, 10)).map((c) => c.id)).toEqual([g2, g]);
      expect(await a.membership.conversationsOf(me, 1)).toEqual([
        { ...record(g2, other, 3000), kind: "direct", memberCount: 2, version: 1 },
      ]);

      const after = await a.membership.removeMember(g, other);
      expect(after.memberCount).toBe(1);
      expect(await a.membership.isMember(g, other)).toBe(false);
      expect(await b.membership.members(g)).toEqual([me]);
      expect((await a.membership.conversationsOf(other, 10)).map((c) => c.id)).toEqual([g2]);
      expect(await rejection(a.membership.removeMember(g, other))).toMatchObject({ reason: "NOT_MEMBER" });
      expect(await rejection(a.membership.addMembers(id("none"), [me], 5))).toMatchObject({
        reason: "CONVERSATION_NOT_FOUND",
      });
      expect((await a.membership.addMembers(g, [other], 10)).memberCount).toBe(2);
      expect((await a.membership.conversationsOf(other, 10)).map((c) => c.id)).toEqual([g2, g]);
    },
    LONG,
  );

  it(
    "changes get the seq bound of the announcement that follows them, once; later ones stay unbound",
    async () => {
      const [g, owner, first, added, later] = [id("g"), id("owner"), id("first"), id("added"), id("later")];
      await a.membership.createConversation(record(g, owner), [owner, first]);
      const seqsOf = async () => {
        const now = await b.membership.membershipSeqs(g);
        return {
          members: Object.fromEntries(now.members.map((m) => [m.user, m.joined.seq])),
          departed: now.departed.map((d) => `${d.user} ${d.joined.seq} ${d.left.seq}`).sort(),
        };
      };
      // The first members count from the start, without waiting for an announcement.
      expect(await seqsOf()).toEqual({ members: { [owner]: 0, [first]: 0 }, departed: [] });

      await a.membership.addMembers(g, [added], 10);
      await a.membership.removeMember(g, first);
      const announcedAtMs = Date.now();
      await sleep(5);
      await a.membership.addMembers(g, [later], 10);
      expect(await seqsOf()).toEqual({
        members: { [owner]: 0, [added]: undefined, [later]: undefined },
        departed: [`${first} 0 undefined`],
      });

      // The sequencer meets the announcement at head 7 (both stores at once: one applies each row).
      const bound = await Promise.all([
        a.membership.boundChanges(g, announcedAtMs, 7),
        b.membership.boundChanges(g, announcedAtMs, 7),
      ]);
      const expected = {
        members: { [owner]: 0, [added]: 7, [later]: undefined },
        departed: [`${first} 0 7`],
      };
      expect(await seqsOf()).toEqual(expected);
      for (const result of bound)
        expect(Object.fromEntries(result.members.map((m) => [m.user, m.joined.seq]))).toEqual(
          expected.members,
        );
      // Met again (a batch handled again after a crash, its head read past it): the bounds stay.
      await a.membership.boundChanges(g, announcedAtMs, 12);
      expect(await seqsOf()).toEqual(expected);
      // The next announcement bounds the later add only.
      await a.membership.boundChanges(g, Date.now(), 9);
      expect(await seqsOf()).toEqual({ ...expected, members: { ...expected.members, [later]: 9 } });

      // Removed, added again and removed again before the next announcement: each ended membership
      // has its own row; the one that never met an announcement is bound at both ends by the next.
      await a.membership.removeMember(g, added);
      await a.membership.addMembers(g, [added], 10);
      await a.membership.removeMember(g, added);
      expect((await seqsOf()).departed).toEqual(
        [`${first} 0 7`, `${added} 7 undefined`, `${added} undefined undefined`].sort(),
      );
      await a.membership.boundChanges(g, Date.now(), 15);
      expect((await seqsOf()).departed).toEqual([`${first} 0 7`, `${added} 7 15`, `${added} 15 15`].sort());
    },
    LONG,
  );

  it(
    "reads and binds only the departures at or after departedSinceMs",
    async () => {
      const [g, owner, early, late] = [id("g"), id("owner"), id("early"), id("late")];
      await a.membership.createConversation(record(g, owner), [owner, early, late]);
      await a.membership.removeMember(g, early);
      await sleep(20);
      const sinceMs = Date.now();
      await sleep(5);
      await a.membership.removeMember(g, late);
      const departed = (seqs: MembershipAsOfSeqs) =>
        seqs.departed.map((d) => `${d.user} ${d.left.seq}`).sort();
      expect(departed(await b.membership.membershipSeqs(g, sinceMs))).toEqual([`${late} undefined`]);
      expect(departed(await b.membership.boundChanges(g, Date.now(), 3, sinceMs))).toEqual([`${late} 3`]);
      // The older one was neither read nor bound.
      expect(departed(await b.membership.membershipSeqs(g))).toEqual(
        [`${early} undefined`, `${late} 3`].sort(),
      );
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("id high-water marks", () => {
  it(
    "outlive the process: another one with the same worker id mints above what the first issued",
    async () => {
      const worker = 7;
      // Reopened by process b, as after a restart on another machine.
      await expectNoIdReissuedAfterRestart(worker, await a.idHighWater(worker), () => b.idHighWater(worker));
      // Another worker's mark is its own.
      expect((await a.idHighWater(worker + 1)).load()).toBeUndefined();
    },
    LONG,
  );

  it(
    "only grow: an older mark written late does not replace a newer one",
    async () => {
      const store = await a.idHighWater(9);
      const at = Date.now();
      await store.store(at + 4_000);
      await store.store(at + 2_000);
      expect((await b.idHighWater(9)).load()).toBe(at + 4_000);
    },
    LONG,
  );
});

describe("receipts, presence and devices", () => {
  it(
    "receipts: a watermark only rises; of equal concurrent raises exactly one wins",
    async () => {
      const [c, u] = [id("c"), id("u")];
      expect(await a.receipts.get(c, u, "read")).toBe(0);
      const same = await Promise.all(
        range(1, 10).map((i) => (i % 2 ? a : b).receipts.raise(c, u, "read", 7)),
      );
      expect(same.filter(Boolean)).toHaveLength(1);
      expect(await a.receipts.raise(c, u, "read", 3)).toBe(false);
      expect(await a.receipts.raise(c, u, "read", 8)).toBe(true);
      await Promise.all(
        shuffled(range(1, 30), 3).map((seq) => (seq % 2 ? a : b).receipts.raise(c, u, "delivered", seq)),
      );
      expect(await a.receipts.get(c, u, "delivered")).toBe(30);
      expect(await a.receipts.get(c, u, "read")).toBe(8);
    },
    LONG,
  );

  it(
    "presence keeps the latest activity whatever order the writes arrive in",
    async () => {
      const [x, y] = [id("x"), id("y")];
      await a.presence.setLastActive(x, 3_000);
      await b.presence.setLastActive(x, 1_000); // late arrival of an older activity
      await a.presence.setLastActive(y, 2_000);
      expect(await a.presence.lastActive([x, y, id("nobody")])).toEqual(
        new Map([
          [x, 3_000],
          [y, 2_000],
        ]),
      );
      expect(await a.presence.lastActive([])).toEqual(new Map());
    },
    LONG,
  );

  it(
    "devices: put replaces by (user, device), remove deletes, any device id",
    async () => {
      const u = id("u");
      const device = (deviceId: string, token = `t-${deviceId}`) => ({
        userId: u,
        deviceId,
        provider: "webpush" as const,
        token,
        registeredAtMs: 1_000,
      });
      await a.devices.put(device("laptop"));
      await a.devices.put(device("\u{1F4F1} phone"));
      await a.devices.put({ ...device("\u{1F4F1} phone", "new"), provider: "apns" });
      await a.devices.remove(u, "never");
      const byId = <T extends { deviceId: string }>(list: T[]) =>
        [...list].sort((p, q) => (p.deviceId < q.deviceId ? -1 : 1));
      expect(byId(await b.devices.list(u))).toEqual(
        byId([device("laptop"), { ...device("\u{1F4F1} phone", "new"), provider: "apns" }]),
      );
      await a.devices.remove(u, "laptop");
      expect((await a.devices.list(u)).map((d) => d.deviceId)).toEqual(["\u{1F4F1} phone"]);
    },
    LONG,
  );
});

// ---------------------------------------------------------------------------------------------
describe("requests in flight", () => {
  it(
    "5,000 reads from as many callers at once all succeed: past REQUESTS_IN_FLIGHT_MAX they wait, none is refused as busy",
    async () => {
      const host = () => a.client.getState().getConnectedHosts()[0]!;
      let peak = 0;
      const sampler = setInterval(() => {
        peak = Math.max(peak, a.client.getState().getInFlightQueries(host()));
      }, 1);
      const users = range(1, 5_000).map((i) => id(`busy-${i}`));
      try {
        const reads = users.map((u) => a.settings.isMuted(u, "g:busy", Date.now()));
        expect(a.requests.waiting).toBeGreaterThanOrEqual(users.length - REQUESTS_IN_FLIGHT_MAX);
        const muted = await Promise.all(reads);
        expect(muted.every((m) => m === false)).toBe(true);
        expect(a.requests.waiting).toBe(0);
      } finally {
        clearInterval(sampler);
      }
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(REQUESTS_IN_FLIGHT_MAX);
      figures.push(`5,000 reads at once: peak ${peak} in flight on the node's connection`);
    },
    LONG,
  );
});

describe("errors", () => {
  it(
    "an unreachable node is UNAVAILABLE / STORAGE_UNAVAILABLE and says what failed",
    async () => {
      const err = await rejection(
        openCassandraStores({ ...options, contactPoints: ["127.0.0.1:1"], keyspace: `${keyspace}_x` }),
      );
      expect(err).toBeInstanceOf(SwitchboardError);
      expect(err).toMatchObject({ code: Code.UNAVAILABLE, reason: "STORAGE_UNAVAILABLE" });
      expect((err as Error).message).toMatch(/^connect to 127\.0\.0\.1:1/);
    },
    LONG,
  );

  it(
    "driver errors map by kind; a closed store is UNAVAILABLE",
    async () => {
      const { ResponseError, OperationTimedOutError } = cassandra.errors;
      const codes = cassandra.types.responseErrorCodes;
      // The driver's text is kept for the logs, never told to a client (it names hosts, and a
      // NoHostAvailableError's includes its inner errors' stacks).
      expect(storageError("t: op", new ResponseError(codes.writeTimeout, "timed out"))).toMatchObject({
        code: Code.UNAVAILABLE,
        reason: "STORAGE_UNAVAILABLE",
        message: "t: op: timed out",
        publicMessage: "t: op: Cassandra did not answer; retry",
        retryAfterMs: 1_000,
      });
      expect(storageError("t: op", new OperationTimedOutError("no answer"))).toMatchObject({
        code: Code.UNAVAILABLE,
      });
      expect(storageError("t: op", new ResponseError(codes.invalid, "bad"))).toMatchObject({
        code: Code.INTERNAL,
        reason: "STORAGE_ERROR",
        publicMessage: "t: op: the store failed",
      });
      const closed = await openCassandraStores(options);
      await closed.close();
      expect(await rejection(closed.messages.lastSeq(id("c")))).toMatchObject({
        code: Code.UNAVAILABLE,
        reason: "STORAGE_UNAVAILABLE",
      });
    },
    LONG,
  );
});
