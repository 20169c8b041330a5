/**
 * The backend contract (docs/design.md §3, §4 and §6): one suite every implementation of
 * `Backends` (internal/backends/types.ts) must pass, embedded (LMDB) and distributed (Kafka +
 * Cassandra) alike. A backend's test file calls `describeBackendContract(name, open)`.
 *
 * Isolation. Every test calls `open` once with a fresh `namespace` ([a-z][a-z0-9_]*, at most 32
 * characters: valid as a Kafka topic prefix, a Cassandra keyspace name or a directory name) and works
 * only on that instance (and on what `reopen` returns). Every id the suite uses is unique to the
 * test (nearly all contain the namespace), and the conversation ids it appends to the log, gateway
 * ids and consumer group names start with it, so an implementation may share expensive resources
 * between tests (one keyspace, one broker); the suite ignores log entries and routing events of other
 * namespaces. What replays a whole topic (the
 * routing table, a new consumer group) is still best given its own topic per namespace.
 *
 * Asynchrony. Nothing assumes that a consumer or a routing subscriber is called synchronously:
 * deliveries are awaited with `eventually` (bounded by `eventuallyMs`). To check that something was
 * *not* delivered, a test appends a sentinel to the same conversation and waits for it: per
 * conversation order means everything before it has been delivered by then.
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it, type TestContext } from "vitest";
import type {
  Backends,
  BatchHandler,
  Closeable,
  ConsumeOptions,
  ConversationRecord,
  DeviceRecord,
  InboxEntry,
  MessageDraft,
  SessionEvent,
  StoredMessage,
} from "../../internal/backends/types.js";

export interface ContractContext {
  /** Unique per test and per run: /^[a-z][a-z0-9_]{0,31}$/. */
  namespace: string;
}

export interface OpenedBackends {
  backends: Backends;
  /**
   * Opens the same durable data again (same directory, topics, keyspace). The suite calls it only
   * after it closed the previous instance. Leave it out for a backend without durable state: the
   * durability tests are then skipped.
   */
  reopen?: () => Promise<Backends>;
  /** Removes what `open` created; called once, after the last instance was closed. */
  dispose?: () => Promise<void>;
}

export type OpenBackends = (ctx: ContractContext) => Promise<OpenedBackends>;

/**
 * Contract tests a backend is known to fail, each naming a bug. They run as `it.fails`, so the
 * suite stays green while the bug exists and turns red (remove the entry) once it is fixed.
 */
export type KnownFailure =
  /** InboxStore.append returns an entry that is still in flight before it is committed. */
  | "inbox-duplicate-of-in-flight-entry-resolves-before-commit"
  /** DeviceStore.list omits devices whose id starts outside the Basic Multilingual Plane. */
  | "devices-list-omits-non-bmp-device-ids";

export interface ContractOptions {
  /** How long an asynchronous effect (consumer delivery, routing event) may take. Default 10 s. */
  eventuallyMs?: number;
  knownFailures?: readonly KnownFailure[];
}

// ---------------------------------------------------------------------------------------------
// Helpers

const runId = `${Date.now().toString(36)}${randomBytes(2).toString("hex")}`;
let namespaces = 0;
const nextNamespace = () => `sb_${runId}_${++namespaces}`;

let messageIds = 0n;
const messageIdBase = BigInt(Date.now()) << 22n;
/** A Snowflake-shaped decimal id, unique in this process. */
const nextMessageId = () => String(messageIdBase + ++messageIds);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function draft(
  conversationId: string,
  sender: string,
  clientMsgId: string,
  body = clientMsgId,
): MessageDraft {
  return { conversationId, sender, clientMsgId, body, messageId: nextMessageId(), createdAtMs: Date.now() };
}

/** A deterministic permutation, so a failure reproduces. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed;
  for (let i = out.length - 1; i > 0; i--) {
    state = (state * 1103515245 + 12345) % 2147483648;
    const j = state % (i + 1);
    const swap = out[i]!;
    out[i] = out[j]!;
    out[j] = swap;
  }
  return out;
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const seqs = (messages: readonly StoredMessage[]) => messages.map((m) => m.seq);

/** The error `promise` rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection, the promise resolved");
}

interface Attempt {
  messages: StoredMessage[];
  threw: boolean;
}

/**
 * A consumer group member that records what it is handed and checks the order guarantee on the fly:
 * per conversation, after the first delivery (a resumed group starts mid-conversation), a seq beyond
 * the highest seen so far must be exactly the next one (re-deliveries of older seqs are allowed:
 * at-least-once), and seqs increase within a batch. Where a conversation starts is checked by tests.
 */
class Collector {
  readonly attempts: Attempt[] = [];
  /** Messages of batches whose handler resolved, in delivery order (re-deliveries included). */
  readonly committed: StoredMessage[] = [];
  readonly violations: string[] = [];
  /** Return true to make the handler throw for this batch. */
  failWhen: (batch: StoredMessage[]) => boolean = () => false;
  consumer: Closeable | undefined;
  private readonly highest = new Map<string, number>();

  constructor(private readonly ns: string) {}

  readonly handler: BatchHandler = async (batch) => {
    // The log's messages as stored; `recipients` (a distributed-log extra) are checked elsewhere.
    const mine = batch
      .filter((m) => m.conversationId.startsWith(this.ns))
      .map(({ recipients: _, ...m }): StoredMessage => m);
    if (mine.length === 0) return;
    this.check(mine);
    const threw = this.failWhen(mine);
    this.attempts.push({ messages: mine, threw });
    if (threw) throw new Error("contract test: handler failure requested");
    this.committed.push(...mine);
  };

  private check(batch: StoredMessage[]): void {
    const inBatch = new Map<string, number>();
    for (const m of batch) {
      const previous = inBatch.get(m.conversationId);
      if (previous !== undefined && m.seq <= previous)
        this.violations.push(`${m.conversationId}: seq ${m.seq} after ${previous} in one batch`);
      inBatch.set(m.conversationId, m.seq);
      const highest = this.highest.get(m.conversationId) ?? m.seq - 1;
      if (m.seq > highest + 1)
        this.violations.push(`${m.conversationId}: seq ${m.seq} delivered before seq ${highest + 1}`);
      if (m.seq > highest) this.highest.set(m.conversationId, m.seq);
    }
  }

  has(messageId: string): boolean {
    return this.committed.some((m) => m.messageId === messageId);
  }

  /** The ids in `expected` not yet delivered by a resolved handler. */
  missing(expected: Iterable<string>): string[] {
    const seen = new Set(this.committed.map((m) => m.messageId));
    return [...expected].filter((id) => !seen.has(id));
  }

  /** One conversation's committed deliveries, one per seq, in seq order. */
  conversation(conversationId: string): StoredMessage[] {
    const bySeq = new Map<number, StoredMessage>();
    for (const m of this.committed) if (m.conversationId === conversationId) bySeq.set(m.seq, m);
    return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
  }

  async stop(): Promise<void> {
    const consumer = this.consumer;
    this.consumer = undefined;
    await consumer?.close();
  }
}

interface Harness {
  readonly ns: string;
  /** The current instance (replaced by `reopen`). */
  readonly b: Backends;
  readonly durable: boolean;
  /** `${ns}_${name}`. */
  id(name: string): string;
  /** Closes the current instance (consumers and subscriptions first) and opens the same data again. */
  reopen(): Promise<Backends>;
  /** Starts a consumer in `group` (a name local to the test) that is closed when the test ends. */
  consume(group: string, collector?: Collector, options?: ConsumeOptions): Promise<Collector>;
  /** Closes `closeable` when the test ends (or at the next reopen); the returned handle closes it once. */
  track(closeable: Closeable): Closeable;
  eventually(assertion: () => void | Promise<void>): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The suite

export function describeBackendContract(
  name: string,
  open: OpenBackends,
  options: ContractOptions = {},
): void {
  const eventuallyMs = options.eventuallyMs ?? 10_000;
  const knownFailures = new Set(options.knownFailures ?? []);
  /** `it`, or `it.fails` while the backend is known to have `bug`. */
  const itUnless = (bug: KnownFailure) => (knownFailures.has(bug) ? it.fails : it);

  async function eventually(assertion: () => void | Promise<void>): Promise<void> {
    const deadline = Date.now() + eventuallyMs;
    for (;;) {
      try {
        await assertion();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(5);
      }
    }
  }

  async function setup(ctx: TestContext): Promise<Harness> {
    const ns = nextNamespace();
    const opened = await open({ namespace: ns });
    let current = opened.backends;
    let currentClosed = false;
    const tracked: Closeable[] = [];
    const closeTracked = async () => {
      for (const c of tracked.splice(0).reverse()) await c.close();
    };
    ctx.onTestFinished(async () => {
      try {
        await closeTracked();
        if (!currentClosed) await current.close();
      } finally {
        await opened.dispose?.();
      }
    });
    const harness: Harness = {
      ns,
      get b() {
        return current;
      },
      durable: opened.reopen !== undefined,
      id: (local) => `${ns}_${local}`,
      async reopen() {
        const reopen = opened.reopen;
        if (!reopen) throw new Error(`${name}: reopen is not supported`);
        await closeTracked();
        await current.close();
        currentClosed = true;
        current = await reopen();
        currentClosed = false;
        return current;
      },
      async consume(group, collector = new Collector(ns), options = {}) {
        collector.consumer = harness.track(
          await current.log.consume(harness.id(group), collector.handler, options),
        );
        return collector;
      },
      track(closeable) {
        let closed = false;
        const once: Closeable = {
          close: async () => {
            if (closed) return;
            closed = true;
            await closeable.close();
          },
        };
        tracked.push(once);
        return once;
      },
      eventually,
    };
    return harness;
  }

  /**
   * What the log holds for one conversation, read by a fresh consumer group: appends a sentinel,
   * consumes until it arrives and returns everything before it, one entry per seq.
   */
  let probes = 0;
  async function readLog(h: Harness, conversationId: string): Promise<StoredMessage[]> {
    const sentinel = await h.b.log.append(draft(conversationId, "sentinel", `sentinel-${++probes}`));
    expect(sentinel.duplicate).toBe(false);
    const c = await h.consume(`probe_${probes}`);
    await h.eventually(() => expect(c.missing([sentinel.message.messageId])).toEqual([]));
    await c.stop();
    expect(c.violations).toEqual([]);
    const messages = c.conversation(conversationId);
    expect(messages.at(-1)).toEqual(sentinel.message);
    return messages.slice(0, -1);
  }

  describe(`backend contract: ${name}`, () => {
    // -------------------------------------------------------------------------------------------
    describe("message log: per-conversation seq", () => {
      it("sequential appends get seq 1..N in append order, counted per conversation", async (ctx) => {
        const h = await setup(ctx);
        // Ids where one is a prefix of the other: a range scan on the wrong bounds would mix them.
        const [a, b] = [h.id("c1"), h.id("c10")];
        const acks: Record<string, StoredMessage[]> = { [a]: [], [b]: [] };
        for (let i = 1; i <= 12; i++) {
          for (const conversationId of i % 3 === 0 ? [a, b] : [a]) {
            const d = draft(conversationId, "alice", `m${i}`);
            const r = await h.b.log.append(d);
            expect(r.duplicate).toBe(false);
            expect(r.message).toEqual({ ...d, seq: acks[conversationId]!.length + 1 });
            acks[conversationId]!.push(r.message);
          }
        }
        expect(seqs(acks[a]!)).toEqual(range(1, 12));
        expect(seqs(acks[b]!)).toEqual(range(1, 4));
        expect(await readLog(h, a)).toEqual(acks[a]);
        expect(await readLog(h, b)).toEqual(acks[b]);
      });

      it("500 concurrent appends over 5 conversations: seqs exactly 1..n per conversation, each message once", async (ctx) => {
        const h = await setup(ctx);
        const conversations = range(1, 5).map((i) => h.id(`conv${i}`));
        // Uneven, interleaved: conversation k gets about twice as many as conversation k-1.
        const drafts = shuffled(
          range(0, 499).map((i) => {
            const k = [0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4][i % 15]!;
            return draft(conversations[k]!, `user${i % 7}`, `cm${i}`);
          }),
          7,
        );
        const results = await Promise.all(drafts.map((d) => h.b.log.append(d)));

        expect(results.filter((r) => r.duplicate)).toEqual([]);
        for (const [i, r] of results.entries())
          expect(r.message).toEqual({ ...drafts[i]!, seq: r.message.seq });
        expect(new Set(results.map((r) => r.message.messageId)).size).toBe(500);
        for (const conversationId of conversations) {
          const mine = results.filter((r) => r.message.conversationId === conversationId);
          const sorted = mine.map((r) => r.message.seq).sort((x, y) => x - y);
          expect(sorted, conversationId).toEqual(range(1, mine.length));
        }

        // The log agrees with the acks: a consumer sees each acked message at its acked seq.
        const c = await h.consume("all");
        const acked = new Map(results.map((r) => [r.message.messageId, r.message]));
        await h.eventually(() => expect(c.missing(acked.keys())).toEqual([]));
        for (const m of c.committed) expect(m).toEqual(acked.get(m.messageId));
        expect(c.violations).toEqual([]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("message log: idempotent re-delivery", () => {
      it("re-appends while the first append is in flight return the original and use no seq", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("dm");
        // A client retrying: same (conversation, sender, clientMsgId), new message id from the gateway.
        const tries = range(1, 6).map((i) => draft(conversationId, "alice", "same", `try ${i}`));
        const results = await Promise.all(tries.map((d) => h.b.log.append(d)));

        const originals = results.filter((r) => !r.duplicate);
        expect(originals).toHaveLength(1);
        const original = originals[0]!.message;
        expect(original.seq).toBe(1);
        for (const r of results) expect(r.message).toEqual(original);

        const next = await h.b.log.append(draft(conversationId, "alice", "other"));
        expect(next).toEqual({ duplicate: false, message: expect.objectContaining({ seq: 2 }) });
        expect(await readLog(h, conversationId)).toEqual([original, next.message]);
      });

      it("re-appends after the first committed return duplicate=true and the original message", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("dm");
        const first = await h.b.log.append(draft(conversationId, "alice", "a1", "hello"));
        const second = await h.b.log.append(draft(conversationId, "alice", "a2", "there"));
        expect([first.message.seq, second.message.seq]).toEqual([1, 2]);

        const again = await h.b.log.append(draft(conversationId, "alice", "a1", "hello (retry)"));
        expect(again).toEqual({ duplicate: true, message: first.message });
        const againConcurrent = await Promise.all([
          h.b.log.append(draft(conversationId, "alice", "a2", "x")),
          h.b.log.append(draft(conversationId, "alice", "a1", "y")),
        ]);
        expect(againConcurrent).toEqual([
          { duplicate: true, message: second.message },
          { duplicate: true, message: first.message },
        ]);

        const third = await h.b.log.append(draft(conversationId, "alice", "a3"));
        expect(third.message.seq).toBe(3);
        expect(await readLog(h, conversationId)).toEqual([first.message, second.message, third.message]);
      });

      it("dedupe is keyed by (conversation, sender, clientMsgId)", async (ctx) => {
        const h = await setup(ctx);
        const [c1, c2] = [h.id("g1"), h.id("g2")];
        const results = await Promise.all([
          h.b.log.append(draft(c1, "alice", "k")),
          h.b.log.append(draft(c1, "bob", "k")),
          h.b.log.append(draft(c2, "alice", "k")),
        ]);
        expect(results.map((r) => r.duplicate)).toEqual([false, false, false]);
        expect(seqs(results.map((r) => r.message)).sort()).toEqual([1, 1, 2]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("message log: consumer groups", () => {
      it("a new group starts at the beginning, follows live appends, each conversation in seq order", async (ctx) => {
        const h = await setup(ctx);
        const conversations = [h.id("x"), h.id("y"), h.id("z")];
        const batch = (from: number) =>
          range(from, from + 59).map((i) => draft(conversations[i % 3]!, "s", `m${i}`, `body ${i}`));
        const before = await Promise.all(batch(0).map((d) => h.b.log.append(d)));
        const c = await h.consume("readers");
        const after = await Promise.all(batch(60).map((d) => h.b.log.append(d)));
        const acked = new Map([...before, ...after].map((r) => [r.message.messageId, r.message]));

        await h.eventually(() => expect(c.missing(acked.keys())).toEqual([]));
        expect(c.violations).toEqual([]);
        for (const conversationId of conversations) {
          expect(seqs(c.conversation(conversationId))).toEqual(range(1, 40));
          for (const m of c.conversation(conversationId)) expect(m).toEqual(acked.get(m.messageId));
        }
      });

      it("two groups each see everything", async (ctx) => {
        const h = await setup(ctx);
        const conversations = [h.id("p"), h.id("q")];
        const g1 = await h.consume("one");
        const g2 = await h.consume("two");
        const results = await Promise.all(
          range(1, 50).map((i) => h.b.log.append(draft(conversations[i % 2]!, "s", `m${i}`))),
        );
        const ids = results.map((r) => r.message.messageId);
        await h.eventually(() => {
          expect(g1.missing(ids)).toEqual([]);
          expect(g2.missing(ids)).toEqual([]);
        });
        // A group created later starts from the beginning too.
        const g3 = await h.consume("three");
        await h.eventually(() => expect(g3.missing(ids)).toEqual([]));
        for (const c of [g1, g2, g3]) expect(c.violations).toEqual([]);
      });

      it("a new group that starts at the latest sees only what comes after it first joined", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("c");
        const old = await Promise.all(
          range(1, 10).map((i) => h.b.log.append(draft(conversationId, "s", `o${i}`))),
        );
        // Joined and left before anything new came: its position is the end at that first join.
        const first = await h.consume("late", undefined, { startAt: "latest" });
        await first.stop();
        const meanwhile = await h.b.log.append(draft(conversationId, "s", "meanwhile"));
        const c = await h.consume("late", undefined, { startAt: "latest" });
        const after = await h.b.log.append(draft(conversationId, "s", "after"));
        await h.eventually(() =>
          expect(c.missing([meanwhile.message.messageId, after.message.messageId])).toEqual([]),
        );
        expect(c.missing(old.map((r) => r.message.messageId))).toHaveLength(10);
        expect(seqs(c.conversation(conversationId))).toEqual([11, 12]);
      });

      it("a group resumes after its last resolved batch: committed batches are not re-delivered", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("c");
        const first = await Promise.all(
          range(1, 20).map((i) => h.b.log.append(draft(conversationId, "s", `a${i}`))),
        );
        const a = await h.consume("g");
        await h.eventually(() => expect(a.missing(first.map((r) => r.message.messageId))).toEqual([]));
        await a.stop();

        const second = await Promise.all(
          range(1, 10).map((i) => h.b.log.append(draft(conversationId, "s", `b${i}`))),
        );
        const b = await h.consume("g");
        await h.eventually(() => expect(b.missing(second.map((r) => r.message.messageId))).toEqual([]));
        expect(b.violations).toEqual([]);
        expect(seqs(b.conversation(conversationId))).toEqual(range(21, 30));
        expect(b.attempts[0]?.messages[0]?.seq).toBe(21);
      });

      it("a batch whose handler threw is handed out again, from where it failed (at-least-once)", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("c");
        const acks = await Promise.all(
          range(1, 10).map((i) => h.b.log.append(draft(conversationId, "s", `m${i}`))),
        );
        const c = new Collector(h.ns);
        let failures = 0;
        c.failWhen = () => failures++ === 0;
        await h.consume("g", c);
        await h.eventually(() => expect(c.missing(acks.map((r) => r.message.messageId))).toEqual([]));

        const [failed, retried] = c.attempts;
        expect(failed?.threw).toBe(true);
        expect(retried?.threw).toBe(false);
        // The retry starts where the failed batch started and holds at least what it held.
        expect(retried!.messages.slice(0, failed!.messages.length)).toEqual(failed!.messages);
        expect(seqs(c.conversation(conversationId))).toEqual(range(1, 10));
        expect(c.violations).toEqual([]);
      });

      it("a batch that was never resolved is re-delivered to the group's next consumer", async (ctx) => {
        const h = await setup(ctx);
        const conversationId = h.id("c");
        const early = await Promise.all(
          range(1, 5).map((i) => h.b.log.append(draft(conversationId, "s", `a${i}`))),
        );
        const a = await h.consume("g");
        await h.eventually(() => expect(a.missing(early.map((r) => r.message.messageId))).toEqual([]));

        a.failWhen = () => true; // from now on every batch fails
        const late = await Promise.all(
          range(6, 10).map((i) => h.b.log.append(draft(conversationId, "s", `b${i}`))),
        );
        await h.eventually(() => expect(a.attempts.some((x) => x.threw)).toBe(true));
        await a.stop();

        const b = await h.consume("g");
        await h.eventually(() => expect(b.missing(late.map((r) => r.message.messageId))).toEqual([]));
        expect(b.attempts[0]?.messages[0]?.seq).toBe(6);
        expect(seqs(b.conversation(conversationId))).toEqual(range(6, 10));
        expect(b.violations).toEqual([]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("durability across close and reopen", () => {
      it("acked messages, seq counters and the dedupe table survive", async (ctx) => {
        const h = await setup(ctx);
        if (!h.durable) ctx.skip();
        const conversations = [h.id("a"), h.id("b"), h.id("c")];
        const drafts = range(0, 29).map((i) => draft(conversations[i % 3]!, "s", `m${i}`));
        const acks = await Promise.all(drafts.map((d) => h.b.log.append(d)));
        await h.reopen();

        // Re-sending after a restart is still recognised: dedupe is durable, not an in-memory window.
        for (const [i, d] of drafts.entries()) {
          const again = await h.b.log.append({ ...d, messageId: nextMessageId(), body: "retry" });
          expect(again).toEqual({ duplicate: true, message: acks[i]!.message });
        }
        for (const conversationId of conversations) {
          const next = await h.b.log.append(draft(conversationId, "s", "after-reopen"));
          expect(next.message.seq).toBe(11);
          const log = await readLog(h, conversationId);
          expect(log).toEqual([
            ...acks.filter((r) => r.message.conversationId === conversationId).map((r) => r.message),
            next.message,
          ]);
          expect(seqs(log)).toEqual(range(1, 11));
        }
      });

      it("appends acked while close() runs are durable and the log stays gap-free", async (ctx) => {
        const h = await setup(ctx);
        if (!h.durable) ctx.skip();
        const conversationId = h.id("c");
        const pending = range(1, 100).map((i) => h.b.log.append(draft(conversationId, "s", `m${i}`)));
        const reopened = h.reopen(); // closes while the appends are in flight
        const settled = await Promise.allSettled(pending);
        await reopened;
        const acked = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value.message] : []));

        const log = await readLog(h, conversationId);
        expect(seqs(log)).toEqual(range(1, log.length));
        const bySeq = new Map(log.map((m) => [m.seq, m]));
        for (const m of acked) expect(bySeq.get(m.seq)).toEqual(m);
        const next = await h.b.log.append(draft(conversationId, "s", "next"));
        expect(next.message.seq).toBe(log.length + 2); // after the log and readLog's sentinel
      });

      it("consumer group offsets survive", async (ctx) => {
        const h = await setup(ctx);
        if (!h.durable) ctx.skip();
        const conversationId = h.id("c");
        const first = await Promise.all(
          range(1, 20).map((i) => h.b.log.append(draft(conversationId, "s", `a${i}`))),
        );
        const a = await h.consume("g");
        await h.eventually(() => expect(a.missing(first.map((r) => r.message.messageId))).toEqual([]));
        await a.stop();
        await h.reopen();

        const second = await Promise.all(
          range(1, 5).map((i) => h.b.log.append(draft(conversationId, "s", `b${i}`))),
        );
        const b = await h.consume("g");
        await h.eventually(() => expect(b.missing(second.map((r) => r.message.messageId))).toEqual([]));
        expect(seqs(b.conversation(conversationId))).toEqual(range(21, 25));
        expect(b.violations).toEqual([]);
      });

      it("inbox cursors, receipts, membership, presence and devices survive", async (ctx) => {
        const h = await setup(ctx);
        if (!h.durable) ctx.skip();
        const [user, conversationId] = [h.id("u"), h.id("conv")];
        const entries = range(1, 5).map((seq) => ({
          userId: user,
          conversationId,
          seq,
          messageId: `m${seq}`,
        }));
        const appended = await h.b.inbox.append(entries);
        expect(await h.b.receipts.raise(conversationId, user, "read", 4)).toBe(true);
        const created = await h.b.membership.createConversation(
          { id: conversationId, kind: "group", name: "team", owner: user, open: true, createdAtMs: 1000 },
          [user, h.id("v")],
        );
        await h.b.presence.setLastActive(user, 123_456);
        const device: DeviceRecord = {
          userId: user,
          deviceId: "phone",
          provider: "fcm",
          token: "tok",
          registeredAtMs: 42,
        };
        await h.b.devices.put(device);
        await h.reopen();

        expect(await h.b.inbox.head(user)).toBe(5);
        expect(await h.b.inbox.read(user, 0, 100)).toEqual(appended);
        const more = await h.b.inbox.append([
          entries[2]!,
          { userId: user, conversationId, seq: 6, messageId: "m6" },
        ]);
        expect(more.map((e) => e.cursor)).toEqual([3, 6]);
        expect(await h.b.receipts.get(conversationId, user, "read")).toBe(4);
        expect(await h.b.receipts.raise(conversationId, user, "read", 4)).toBe(false);
        expect(await h.b.membership.getConversation(conversationId)).toEqual(created.record);
        expect(await h.b.membership.isMember(conversationId, h.id("v"))).toBe(true);
        expect(await h.b.presence.lastActive([user])).toEqual(new Map([[user, 123_456]]));
        expect(await h.b.devices.list(user)).toEqual([device]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("message store", () => {
      const TOTAL = 2_500;
      const stored = (conversationId: string, seq: number): StoredMessage => ({
        conversationId,
        seq,
        messageId: String(10_000_000_000n + BigInt(seq)),
        sender: seq % 2 === 0 ? "alice" : "bob",
        clientMsgId: `c${seq}`,
        body: `message ${seq}`,
        createdAtMs: 1_700_000_000_000 + seq,
      });
      /**
       * 2,500 messages written out of order in chunks, so an implementation bucketing by seq range
       * (e.g. 1,000 per partition) spans three buckets; plus neighbours whose ids share a prefix.
       */
      async function fixture(h: Harness) {
        const conversationId = h.id("h");
        const neighbours = [h.id("h0"), h.id("h_"), h.id("g")];
        const all = shuffled(range(1, TOTAL), 3).map((seq) => stored(conversationId, seq));
        for (let i = 0; i < all.length; i += 400) await h.b.messages.write(all.slice(i, i + 400));
        for (const n of neighbours) await h.b.messages.write(range(1, 3).map((seq) => stored(n, seq)));
        const expected = (from: number, to: number) =>
          range(from, to).map((seq) => stored(conversationId, seq));
        return { conversationId, neighbours, expected };
      }

      it("pages newest first via beforeSeq across 2,500 messages; hasMore false only on the last page", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, expected } = await fixture(h);
        for (const limit of [100, 333]) {
          const pages: StoredMessage[][] = [];
          let beforeSeq = 0;
          for (;;) {
            const page = await h.b.messages.history(conversationId, { beforeSeq, limit });
            pages.push(page.messages);
            const top = beforeSeq === 0 ? TOTAL : beforeSeq - 1;
            expect(seqs(page.messages)).toEqual(range(Math.max(1, top - limit + 1), top));
            expect(page.hasMore).toBe(top > limit);
            if (!page.hasMore) break;
            beforeSeq = page.messages[0]!.seq;
          }
          expect(pages.length).toBe(Math.ceil(TOTAL / limit));
          expect(pages.reverse().flat()).toEqual(expected(1, TOTAL));
        }
      });

      it("pages forward via afterSeq across 2,500 messages; hasMore false only on the last page", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, expected } = await fixture(h);
        for (const limit of [100, 333]) {
          const pages: StoredMessage[][] = [];
          let afterSeq = 7;
          for (;;) {
            const page = await h.b.messages.history(conversationId, { afterSeq, limit });
            pages.push(page.messages);
            expect(seqs(page.messages)).toEqual(range(afterSeq + 1, Math.min(TOTAL, afterSeq + limit)));
            expect(page.hasMore).toBe(afterSeq + limit < TOTAL);
            if (!page.hasMore) break;
            afterSeq = page.messages.at(-1)!.seq;
          }
          expect(pages.flat()).toEqual(expected(8, TOTAL));
        }
      });

      it("pages exactly at the bucket boundaries 1000/1001 and 2000/2001 and at both ends", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, expected } = await fixture(h);
        // [query, first seq, last seq (first-1 when empty), hasMore]
        const cases: Array<
          [{ beforeSeq?: number; afterSeq?: number; limit: number }, number, number, boolean]
        > = [
          [{ beforeSeq: 1001, limit: 1 }, 1000, 1000, true],
          [{ beforeSeq: 1002, limit: 2 }, 1000, 1001, true],
          [{ beforeSeq: 1002, limit: 1 }, 1001, 1001, true],
          [{ beforeSeq: 2001, limit: 1000 }, 1001, 2000, true],
          [{ beforeSeq: 2002, limit: 1001 }, 1001, 2001, true],
          [{ beforeSeq: 2001, limit: 2000 }, 1, 2000, false],
          [{ beforeSeq: 2002, limit: 2000 }, 2, 2001, true],
          [{ beforeSeq: 1011, limit: 20 }, 991, 1010, true],
          [{ afterSeq: 999, limit: 2 }, 1000, 1001, true],
          [{ afterSeq: 1000, limit: 1 }, 1001, 1001, true],
          [{ afterSeq: 1000, limit: 1000 }, 1001, 2000, true],
          [{ afterSeq: 1999, limit: 2 }, 2000, 2001, true],
          [{ afterSeq: 1990, limit: 20 }, 1991, 2010, true],
          [{ afterSeq: 500, limit: 2000 }, 501, 2500, false],
          [{ afterSeq: 499, limit: 2000 }, 500, 2499, true],
          // The ends: a page that exactly reaches an end has no more.
          [{ beforeSeq: 11, limit: 10 }, 1, 10, false],
          [{ beforeSeq: 12, limit: 10 }, 2, 11, true],
          [{ beforeSeq: 2, limit: 1 }, 1, 1, false],
          [{ beforeSeq: 1, limit: 5 }, 1, 0, false],
          [{ afterSeq: 2490, limit: 10 }, 2491, 2500, false],
          [{ afterSeq: 2489, limit: 10 }, 2490, 2499, true],
          [{ afterSeq: 2500, limit: 5 }, 2501, 2500, false],
          [{ afterSeq: 5000, limit: 5 }, 5001, 5000, false],
          [{ beforeSeq: 5000, limit: 3 }, 2498, 2500, true],
          // No bounds (0 means none, as the gateway sends it): the newest page.
          [{ limit: 5 }, 2496, 2500, true],
          [{ beforeSeq: 0, afterSeq: 0, limit: 5 }, 2496, 2500, true],
          [{ limit: 3000 }, 1, 2500, false],
          // Both bounds: the oldest `limit` above afterSeq, below beforeSeq.
          [{ afterSeq: 990, beforeSeq: 2010, limit: 5000 }, 991, 2009, false],
          [{ afterSeq: 990, beforeSeq: 2010, limit: 20 }, 991, 1010, true],
          [{ afterSeq: 990, beforeSeq: 1011, limit: 20 }, 991, 1010, false],
          [{ afterSeq: 1000, beforeSeq: 1001, limit: 5 }, 1001, 1000, false],
        ];
        for (const [query, from, to, hasMore] of cases) {
          const page = await h.b.messages.history(conversationId, query);
          expect({ query, seqs: seqs(page.messages), hasMore: page.hasMore }).toEqual({
            query,
            seqs: range(from, to),
            hasMore,
          });
          expect(page.messages).toEqual(expected(from, to));
        }
      });

      it("keeps conversations apart; an unknown conversation is empty", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, neighbours } = await fixture(h);
        for (const n of neighbours) {
          expect(await h.b.messages.history(n, { limit: 10 })).toEqual({
            messages: range(1, 3).map((seq) => stored(n, seq)),
            hasMore: false,
          });
          expect(await h.b.messages.lastSeq(n)).toBe(3);
        }
        expect(await h.b.messages.lastSeq(conversationId)).toBe(TOTAL);
        expect(await h.b.messages.lastSeq(h.id("nothing"))).toBe(0);
        expect(await h.b.messages.history(h.id("nothing"), { limit: 10 })).toEqual({
          messages: [],
          hasMore: false,
        });
        expect(await h.b.messages.history(h.id("nothing"), { afterSeq: 3, limit: 10 })).toEqual({
          messages: [],
          hasMore: false,
        });
      });

      it("getMany returns the rows in the given order and leaves missing ones out", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, neighbours } = await fixture(h);
        const keys = [
          { conversationId, seq: 2001 },
          { conversationId, seq: 1000 },
          { conversationId: neighbours[0]!, seq: 2 },
          { conversationId, seq: 2501 },
          { conversationId, seq: 1001 },
          { conversationId: h.id("nothing"), seq: 1 },
          { conversationId, seq: 2000 },
          { conversationId, seq: 1 },
          { conversationId, seq: 2500 },
          { conversationId: neighbours[0]!, seq: 4 },
        ];
        const present = [keys[0]!, keys[1]!, keys[2]!, keys[4]!, keys[6]!, keys[7]!, keys[8]!];
        expect(await h.b.messages.getMany(keys)).toEqual(present.map((k) => stored(k.conversationId, k.seq)));
        expect(await h.b.messages.getMany([])).toEqual([]);
      });

      it("write is idempotent: re-writing stored rows is harmless, new rows in the same call land", async (ctx) => {
        const h = await setup(ctx);
        const { conversationId, expected } = await fixture(h);
        await h.b.messages.write(expected(990, 2010));
        // Stored rows around new ones, in one call; then the same call again.
        const mixed = [...expected(2495, 2500), ...expected(2501, 2510), ...expected(1, 3)];
        await h.b.messages.write(mixed);
        await h.b.messages.write(mixed);
        expect(await h.b.messages.lastSeq(conversationId)).toBe(2510);
        expect(await h.b.messages.history(conversationId, { afterSeq: 985, limit: 30 })).toEqual({
          messages: expected(986, 1015),
          hasMore: true,
        });
        expect(await h.b.messages.history(conversationId, { limit: 3000 })).toEqual({
          messages: expected(1, 2510),
          hasMore: false,
        });
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("membership", () => {
      const record = (
        id: string,
        owner: string,
        createdAtMs = 1000,
      ): Omit<ConversationRecord, "memberCount"> => ({
        id,
        kind: "group",
        name: `name of ${id}`,
        owner,
        open: true,
        createdAtMs,
      });

      it("createConversation is idempotent: a second create returns created=false and the original", async (ctx) => {
        const h = await setup(ctx);
        const [id, a, b, c] = [h.id("g"), h.id("a"), h.id("b"), h.id("c")];
        expect(await h.b.membership.getConversation(id)).toBeUndefined();
        const first = await h.b.membership.createConversation(record(id, a), [a, b, a]);
        expect(first).toEqual({ created: true, record: { ...record(id, a), memberCount: 2 } });

        const second = await h.b.membership.createConversation(
          { ...record(id, c, 2000), kind: "direct", name: "other", open: false },
          [c],
        );
        expect(second).toEqual({ created: false, record: first.record });
        expect(await h.b.membership.getConversation(id)).toEqual(first.record);
        expect((await h.b.membership.members(id)).sort()).toEqual([a, b].sort());
        expect(await h.b.membership.isMember(id, c)).toBe(false);
        expect(await h.b.membership.conversationsOf(c, 10)).toEqual([]);
      });

      it("updateGroup renames and opens or closes a group, keeps its members, and refuses what is no group", async (ctx) => {
        const h = await setup(ctx);
        const [id, a, b] = [h.id("g"), h.id("a"), h.id("b")];
        const { record: created } = await h.b.membership.createConversation(record(id, a), [a, b]);
        const renamed = await h.b.membership.updateGroup(id, { name: "renamed" });
        expect(renamed).toEqual({ ...created, name: "renamed" });
        const closed = await h.b.membership.updateGroup(id, { open: false });
        expect(closed).toEqual({ ...created, name: "renamed", open: false });
        expect(await h.b.membership.getConversation(id)).toEqual(closed);
        expect((await h.b.membership.members(id)).sort()).toEqual([a, b].sort());
        await expect(h.b.membership.updateGroup(h.id("nope"), { name: "x" })).rejects.toMatchObject({
          reason: "GROUP_NOT_FOUND",
        });
        const dm = h.id("dm");
        await h.b.membership.createConversation({ ...record(dm, ""), kind: "direct", name: "" }, [a, b]);
        await expect(h.b.membership.updateGroup(dm, { name: "x" })).rejects.toMatchObject({
          reason: "GROUP_NOT_FOUND",
        });
      });

      it("concurrent creates of one id: exactly one is created, all return the same record", async (ctx) => {
        const h = await setup(ctx);
        const id = h.id("g");
        const results = await Promise.all(
          range(1, 8).map((i) =>
            h.b.membership.createConversation(record(id, h.id(`o${i}`)), [h.id(`o${i}`)]),
          ),
        );
        expect(results.filter((r) => r.created)).toHaveLength(1);
        const winner = results.find((r) => r.created)!.record;
        for (const r of results) expect(r.record).toEqual(winner);
        expect(await h.b.membership.members(id)).toEqual([winner.owner]);
      });

      it("addMembers enforces membersMax (reason GROUP_FULL), ignores present users, refuses all-or-nothing", async (ctx) => {
        const h = await setup(ctx);
        const id = h.id("g");
        const u = (n: string) => h.id(n);
        await h.b.membership.createConversation(record(id, u("a")), [u("a"), u("b"), u("c")]);

        const added = await h.b.membership.addMembers(id, [u("d"), u("b"), u("d")], 5);
        expect(added).toEqual({ ...record(id, u("a")), memberCount: 4 });
        // Two fresh users, one slot: refused as a whole.
        const full = await rejection(h.b.membership.addMembers(id, [u("e"), u("f")], 5));
        expect(full).toMatchObject({ reason: "GROUP_FULL" });
        expect(await h.b.membership.isMember(id, u("e"))).toBe(false);
        expect(await h.b.membership.isMember(id, u("f"))).toBe(false);
        expect((await h.b.membership.getConversation(id))?.memberCount).toBe(4);

        expect((await h.b.membership.addMembers(id, [u("e"), u("a")], 5)).memberCount).toBe(5);
        // At the limit, re-adding present users is not growth.
        expect((await h.b.membership.addMembers(id, [u("a"), u("b"), u("e")], 5)).memberCount).toBe(5);
        expect(await rejection(h.b.membership.addMembers(id, [u("a"), u("g")], 5))).toMatchObject({
          reason: "GROUP_FULL",
        });
        expect((await h.b.membership.members(id)).sort()).toEqual(["a", "b", "c", "d", "e"].map(u).sort());
        expect((await h.b.membership.getConversation(id))?.memberCount).toBe(5);
        // Growing the limit lets them in.
        expect((await h.b.membership.addMembers(id, [u("g")], 6)).memberCount).toBe(6);
        expect(await h.b.membership.isMember(id, u("g"))).toBe(true);
      });

      it("concurrent addMembers never exceed membersMax", async (ctx) => {
        const h = await setup(ctx);
        const id = h.id("g");
        await h.b.membership.createConversation(record(id, h.id("owner")), [h.id("owner")]);
        const settled = await Promise.allSettled(
          range(1, 20).map((i) => h.b.membership.addMembers(id, [h.id(`u${i}`)], 10)),
        );
        const refused = settled.filter((s) => s.status === "rejected");
        expect(settled.length - refused.length).toBe(9);
        for (const r of refused) expect(r.reason).toMatchObject({ reason: "GROUP_FULL" });
        expect((await h.b.membership.getConversation(id))?.memberCount).toBe(10);
        expect(await h.b.membership.members(id)).toHaveLength(10);
      });

      it("removeMember, isMember and members", async (ctx) => {
        const h = await setup(ctx);
        const id = h.id("g");
        const users = ["a", "b", "c", "b0"].map((n) => h.id(n));
        await h.b.membership.createConversation(record(id, users[0]!), users);
        // A neighbouring conversation whose id extends this one must not leak into members().
        await h.b.membership.createConversation(record(h.id("g0"), h.id("z")), [h.id("z")]);
        expect((await h.b.membership.members(id)).sort()).toEqual([...users].sort());

        const after = await h.b.membership.removeMember(id, users[1]!);
        expect(after.memberCount).toBe(3);
        expect(await h.b.membership.isMember(id, users[1]!)).toBe(false);
        expect(await h.b.membership.isMember(id, users[3]!)).toBe(true);
        expect((await h.b.membership.members(id)).sort()).toEqual([users[0]!, users[2]!, users[3]!].sort());
        expect(await h.b.membership.conversationsOf(users[1]!, 10)).toEqual([]);
        expect(await h.b.membership.getConversation(id)).toEqual(after);

        // Removing someone who is not a member may throw, but never corrupts the count.
        await h.b.membership.removeMember(id, users[1]!).catch(() => undefined);
        expect((await h.b.membership.getConversation(id))?.memberCount).toBe(3);
        expect(await h.b.membership.isMember(h.id("nothing"), users[0]!)).toBe(false);
        // Re-adding after removal counts again.
        expect((await h.b.membership.addMembers(id, [users[1]!], 10)).memberCount).toBe(4);
      });

      it("conversationsOf lists a user's conversations newest first, at most `limit`, with current counts", async (ctx) => {
        const h = await setup(ctx);
        const [me, other] = [h.id("me"), h.id("me0")];
        const ids = range(1, 6).map((i) => h.id(`conv${i}`));
        // Created out of order; createdAtMs decides.
        const created = [3, 1, 6, 2, 5, 4];
        for (const i of created)
          await h.b.membership.createConversation(record(ids[i - 1]!, other, 1000 * i), [other]);
        for (const i of created) await h.b.membership.addMembers(ids[i - 1]!, [me], 100);
        // Newer, but only the neighbouring user (whose id extends mine) is in it.
        await h.b.membership.createConversation(record(h.id("conv7"), other, 7000), [other]);

        const newestFirst = [6, 5, 4, 3, 2, 1].map((i) => ({
          ...record(ids[i - 1]!, other, 1000 * i),
          memberCount: 2,
        }));
        expect(await h.b.membership.conversationsOf(me, 3)).toEqual(newestFirst.slice(0, 3));
        expect(await h.b.membership.conversationsOf(me, 100)).toEqual(newestFirst);
        await h.b.membership.removeMember(ids[4]!, me);
        expect(await h.b.membership.conversationsOf(me, 2)).toEqual([newestFirst[0], newestFirst[2]]);
        expect(await h.b.membership.conversationsOf(h.id("nobody"), 10)).toEqual([]);
      });

      it("handles ids in the platform's whole alphabet, at either end of the key range", async (ctx) => {
        const h = await setup(ctx);
        // User ids are /^[A-Za-z0-9._@:+-]{1,128}$/ (internal/lib/auth.ts): start with each kind.
        const users = [".", "-", "+", ":", "@", "_", "0", "9", "A", "Z", "a", "z"].map((c) => `${c}${h.ns}`);
        users.push(`${h.ns}${"z".repeat(128 - h.ns.length)}`);
        const group = `g:${Date.now()}${namespaces}`;
        const direct = `dm:${users[0]}~${users[1]}`;
        await h.b.membership.createConversation(record(group, users[0]!, 1), users);
        await h.b.membership.createConversation({ ...record(direct, users[0]!, 2), kind: "direct" }, [
          users[0]!,
          users[1]!,
        ]);
        expect((await h.b.membership.members(group)).sort()).toEqual([...users].sort());
        expect((await h.b.membership.members(direct)).sort()).toEqual([users[0], users[1]].sort());
        for (const user of users) expect(await h.b.membership.isMember(group, user)).toBe(true);
        expect((await h.b.membership.conversationsOf(users[0]!, 10)).map((c) => c.id)).toEqual([
          direct,
          group,
        ]);
        expect((await h.b.membership.conversationsOf(users.at(-1)!, 10)).map((c) => c.id)).toEqual([group]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("inbox", () => {
      const entry = (userId: string, conversationId: string, seq: number): Omit<InboxEntry, "cursor"> => ({
        userId,
        conversationId,
        seq,
        messageId: `${conversationId}/${seq}`,
      });

      it("append assigns per-user cursors 1..n in the given order", async (ctx) => {
        const h = await setup(ctx);
        // u0 extends u's id: a prefix scan on the wrong bounds would mix their streams.
        const [u, v, w, c1, c2] = [h.id("u"), h.id("v"), h.id("u0"), h.id("c1"), h.id("c2")];
        const first = await h.b.inbox.append([
          entry(u, c1, 1),
          entry(v, c1, 1),
          entry(u, c1, 2),
          entry(w, c2, 7),
          entry(u, c2, 1),
          entry(v, c2, 1),
          entry(u, c1, 3),
        ]);
        expect(first.map((e) => [e.userId, e.cursor])).toEqual([
          [u, 1],
          [v, 1],
          [u, 2],
          [w, 1],
          [u, 3],
          [v, 2],
          [u, 4],
        ]);
        expect(first[2]).toEqual({ ...entry(u, c1, 2), cursor: 2 });
        const second = await h.b.inbox.append([entry(u, c2, 2), entry(u, c1, 4)]);
        expect(second.map((e) => e.cursor)).toEqual([5, 6]);

        expect(await h.b.inbox.read(u, 0, 100)).toEqual(
          [
            entry(u, c1, 1),
            entry(u, c1, 2),
            entry(u, c2, 1),
            entry(u, c1, 3),
            entry(u, c2, 2),
            entry(u, c1, 4),
          ].map((e, i) => ({ ...e, cursor: i + 1 })),
        );
        expect(await h.b.inbox.read(v, 0, 100)).toEqual([
          { ...entry(v, c1, 1), cursor: 1 },
          { ...entry(v, c2, 1), cursor: 2 },
        ]);
        expect(await h.b.inbox.read(w, 0, 100)).toEqual([{ ...entry(w, c2, 7), cursor: 1 }]);
        expect([await h.b.inbox.head(u), await h.b.inbox.head(v), await h.b.inbox.head(w)]).toEqual([
          6, 2, 1,
        ]);
        expect(await h.b.inbox.head(h.id("nobody"))).toBe(0);
      });

      it("append is idempotent per (user, conversation, seq): same cursor, no new cursor", async (ctx) => {
        const h = await setup(ctx);
        const [u, v, c1, c2] = [h.id("u"), h.id("v"), h.id("c1"), h.id("c2")];
        await h.b.inbox.append([entry(u, c1, 1), entry(u, c1, 2), entry(u, c2, 1)]);
        const again = await h.b.inbox.append([
          entry(u, c1, 2),
          entry(u, c2, 2),
          entry(u, c1, 1),
          entry(v, c1, 2),
          entry(u, c2, 2),
        ]);
        expect(again).toEqual([
          { ...entry(u, c1, 2), cursor: 2 },
          { ...entry(u, c2, 2), cursor: 4 },
          { ...entry(u, c1, 1), cursor: 1 },
          { ...entry(v, c1, 2), cursor: 1 },
          { ...entry(u, c2, 2), cursor: 4 },
        ]);
        expect(await h.b.inbox.head(u)).toBe(4);
        expect((await h.b.inbox.read(u, 0, 100)).map((e) => [e.conversationId, e.seq, e.cursor])).toEqual([
          [c1, 1, 1],
          [c1, 2, 2],
          [c2, 1, 3],
          [c2, 2, 4],
        ]);
        expect((await h.b.inbox.append([entry(u, c1, 3)]))[0]?.cursor).toBe(5);
      });

      it("concurrent appends get gap-free cursors; concurrent duplicates share one", async (ctx) => {
        const h = await setup(ctx);
        const [u, c1, c2] = [h.id("u"), h.id("c1"), h.id("c2")];
        const distinct = range(1, 100).map((i) => entry(u, i % 2 ? c1 : c2, i));
        const calls = shuffled([...distinct, ...distinct.slice(0, 30)], 11).map((e) => [e]);
        const results = (await Promise.all(calls.map((c) => h.b.inbox.append(c)))).flat();

        const cursorOf = new Map<string, number>();
        for (const r of results) {
          const key = `${r.conversationId}/${r.seq}`;
          const known = cursorOf.get(key);
          if (known !== undefined) expect(r.cursor, key).toBe(known);
          cursorOf.set(key, r.cursor);
        }
        expect([...cursorOf.values()].sort((a, b) => a - b)).toEqual(range(1, 100));
        expect(await h.b.inbox.head(u)).toBe(100);
        const read = await h.b.inbox.read(u, 0, 1000);
        expect(read.map((e) => e.cursor)).toEqual(range(1, 100));
        for (const e of read) expect(e.cursor).toBe(cursorOf.get(`${e.conversationId}/${e.seq}`));
      });

      it("read(after, limit) pages oldest first; head is the last cursor", async (ctx) => {
        const h = await setup(ctx);
        const [u, c] = [h.id("u"), h.id("c")];
        await h.b.inbox.append(range(1, 25).map((seq) => entry(u, c, seq)));
        const pages: InboxEntry[][] = [];
        for (let after = 0; ; ) {
          const page = await h.b.inbox.read(u, after, 10);
          if (page.length === 0) break;
          pages.push(page);
          after = page.at(-1)!.cursor;
        }
        expect(pages.map((p) => p.length)).toEqual([10, 10, 5]);
        expect(pages.flat()).toEqual(range(1, 25).map((seq) => ({ ...entry(u, c, seq), cursor: seq })));
        expect((await h.b.inbox.read(u, 24, 10)).map((e) => e.cursor)).toEqual([25]);
        expect(await h.b.inbox.read(u, 25, 10)).toEqual([]);
        expect(await h.b.inbox.read(u, 100, 10)).toEqual([]);
        expect((await h.b.inbox.read(u, 3, 2)).map((e) => e.cursor)).toEqual([4, 5]);
        expect(await h.b.inbox.head(u)).toBe(25);
      });

      itUnless("inbox-duplicate-of-in-flight-entry-resolves-before-commit")(
        // An append that resolved is durable and readable, even when its entry was already in flight
        // (the log waits for the in-flight original in the same situation).
        "an append returning an entry another append has in flight resolves only once it is readable",
        async (ctx) => {
          const h = await setup(ctx);
          const [u, c] = [h.id("u"), h.id("c")];
          const entries = range(1, 200).map((seq) => entry(u, c, seq));
          const original = h.b.inbox.append(entries);
          const again = await h.b.inbox.append([entries[199]!]);
          expect(again).toEqual([{ ...entries[199]!, cursor: 200 }]);
          const head = await h.b.inbox.head(u);
          const read = await h.b.inbox.read(u, 199, 10);
          await original;
          expect(head).toBe(200);
          expect(read).toEqual(again);
        },
      );
    });

    // -------------------------------------------------------------------------------------------
    describe("receipts", () => {
      it("raise returns true only when the watermark moves up", async (ctx) => {
        const h = await setup(ctx);
        const [c, u, v] = [h.id("c"), h.id("u"), h.id("v")];
        expect(await h.b.receipts.get(c, u, "read")).toBe(0);
        expect(await h.b.receipts.raise(c, u, "read", 5)).toBe(true);
        expect(await h.b.receipts.raise(c, u, "read", 5)).toBe(false);
        expect(await h.b.receipts.raise(c, u, "read", 3)).toBe(false);
        expect(await h.b.receipts.get(c, u, "read")).toBe(5);
        expect(await h.b.receipts.raise(c, u, "read", 6)).toBe(true);
        expect(await h.b.receipts.get(c, u, "read")).toBe(6);
        // Kinds, users and conversations have separate watermarks.
        expect(await h.b.receipts.get(c, u, "delivered")).toBe(0);
        expect(await h.b.receipts.raise(c, u, "delivered", 2)).toBe(true);
        expect(await h.b.receipts.get(c, v, "read")).toBe(0);
        expect(await h.b.receipts.get(h.id("c0"), u, "read")).toBe(0);
        expect(await h.b.receipts.get(c, u, "read")).toBe(6);
      });

      it("concurrent raises: exactly one wins per value, the watermark ends at the maximum", async (ctx) => {
        const h = await setup(ctx);
        const [c, u] = [h.id("c"), h.id("u")];
        const same = await Promise.all(range(1, 10).map(() => h.b.receipts.raise(c, u, "read", 7)));
        expect(same.filter(Boolean)).toHaveLength(1);
        const mixed = await Promise.all(
          shuffled(range(1, 40), 5).map((seq) => h.b.receipts.raise(c, u, "delivered", seq)),
        );
        expect(mixed.filter(Boolean).length).toBeGreaterThanOrEqual(1);
        expect(await h.b.receipts.get(c, u, "delivered")).toBe(40);
        expect(await h.b.receipts.get(c, u, "read")).toBe(7);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("routing events", () => {
      /** Follows the routing table the way a router does; ignores other namespaces' events. */
      class Table {
        readonly events: SessionEvent[] = [];
        readonly sessions = new Map<string, SessionEvent>();
        constructor(private readonly ns: string) {}
        readonly handler = (e: SessionEvent) => {
          if (!e.gatewayId.startsWith(this.ns)) return;
          this.events.push(e);
          if (e.kind === "up") this.sessions.set(e.sessionId, e);
          else if (e.kind === "down") this.sessions.delete(e.sessionId);
          else
            for (const [id, s] of this.sessions)
              if (s.gatewayId === e.gatewayId && s.gatewayEpoch <= e.gatewayEpoch) this.sessions.delete(id);
        };
        ids = () => [...this.sessions.keys()].sort();
      }
      const up = (sessionId: string, gatewayId: string, gatewayEpoch = 1, userId = `user-${sessionId}`) =>
        ({ kind: "up", userId, sessionId, gatewayId, gatewayEpoch }) satisfies SessionEvent;
      const down = (s: SessionEvent): SessionEvent => ({ ...s, kind: "down" });
      const gone = (gatewayId: string, gatewayEpoch: number): SessionEvent => ({
        kind: "gateway-gone",
        userId: "",
        sessionId: "",
        gatewayId,
        gatewayEpoch,
      });

      it("subscribe replays the current up sessions, then follows changes", async (ctx) => {
        const h = await setup(ctx);
        const [g1, g2] = [h.id("gw1"), h.id("gw2")];
        const s = [up(h.id("s1"), g1), up(h.id("s2"), g1), up(h.id("s3"), g2), up(h.id("s4"), g2)];
        for (const e of s) await h.b.routing.publish(e);
        await h.b.routing.publish(down(s[1]!));
        // A session that moved: its latest "up" wins.
        const moved = up(h.id("s4"), g1, 3);
        await h.b.routing.publish(moved);

        const table = new Table(h.ns);
        h.track(await h.b.routing.subscribe(table.handler));
        await h.eventually(() =>
          expect(table.ids()).toEqual([s[0]!.sessionId, s[2]!.sessionId, moved.sessionId].sort()),
        );
        // The replay is the table as "up" events, not the history of changes.
        await h.eventually(() =>
          expect([...table.events].sort((a, b) => (a.sessionId < b.sessionId ? -1 : 1))).toEqual([
            s[0],
            s[2],
            moved,
          ]),
        );

        const s5 = up(h.id("s5"), g2);
        await h.b.routing.publish(s5);
        await h.b.routing.publish(down(s[0]!));
        await h.eventually(() =>
          expect(table.ids()).toEqual([s[2]!.sessionId, moved.sessionId, s5.sessionId].sort()),
        );
        expect(table.events.slice(-2)).toEqual([s5, down(s[0]!)]);
      });

      it('"gateway-gone" with epoch E removes that gateway\'s sessions with epoch <= E only', async (ctx) => {
        const h = await setup(ctx);
        const [g1, g2] = [h.id("gw1"), h.id("gw1x")];
        const sessions = [
          up(h.id("a"), g1, 1),
          up(h.id("b"), g1, 2),
          up(h.id("c"), g1, 3),
          up(h.id("d"), g2, 1),
          up(h.id("e"), g2, 5),
        ];
        for (const e of sessions) await h.b.routing.publish(e);
        const live = new Table(h.ns);
        h.track(await h.b.routing.subscribe(live.handler));
        await h.eventually(() => expect(live.ids()).toHaveLength(5));

        await h.b.routing.publish(gone(g1, 2));
        const expected = [h.id("c"), h.id("d"), h.id("e")].sort();
        await h.eventually(() => expect(live.ids()).toEqual(expected));
        expect(live.events.at(-1)).toEqual(gone(g1, 2));

        // A later subscriber's replay agrees.
        const late = new Table(h.ns);
        h.track(await h.b.routing.subscribe(late.handler));
        await h.eventually(() => expect(late.ids()).toEqual(expected));
        expect(late.events.every((e) => e.kind === "up")).toBe(true);

        // A new incarnation of the gateway registers again; a stale gone does not remove it.
        const fresh = up(h.id("f"), g1, 4);
        await h.b.routing.publish(fresh);
        await h.b.routing.publish(gone(g1, 3));
        const after = [h.id("d"), h.id("e"), h.id("f")].sort();
        await h.eventually(() => expect(live.ids()).toEqual(after));
        const third = new Table(h.ns);
        h.track(await h.b.routing.subscribe(third.handler));
        await h.eventually(() => expect(third.ids()).toEqual(after));
      });

      it("a closed subscription receives nothing more", async (ctx) => {
        const h = await setup(ctx);
        const g = h.id("gw");
        const closedOne = new Table(h.ns);
        const sub = h.track(await h.b.routing.subscribe(closedOne.handler));
        const open = new Table(h.ns);
        h.track(await h.b.routing.subscribe(open.handler));
        await h.b.routing.publish(up(h.id("s1"), g));
        await h.eventually(() => expect(closedOne.ids()).toEqual([h.id("s1")]));
        await sub.close();
        await h.b.routing.publish(up(h.id("s2"), g));
        await h.eventually(() => expect(open.ids()).toEqual([h.id("s1"), h.id("s2")]));
        expect(closedOne.ids()).toEqual([h.id("s1")]);
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("presence store", () => {
      it("records last-active times and returns only known users", async (ctx) => {
        const h = await setup(ctx);
        const [a, b, c] = [h.id("a"), h.id("b"), h.id("a0")];
        expect(await h.b.presence.lastActive([a, b])).toEqual(new Map());
        await h.b.presence.setLastActive(a, 1_000);
        await h.b.presence.setLastActive(b, 2_000);
        await h.b.presence.setLastActive(a, 3_000);
        expect(await h.b.presence.lastActive([a, b, c])).toEqual(
          new Map([
            [a, 3_000],
            [b, 2_000],
          ]),
        );
        expect(await h.b.presence.lastActive([])).toEqual(new Map());
      });
    });

    // -------------------------------------------------------------------------------------------
    describe("device store", () => {
      const device = (userId: string, deviceId: string, token = `token-${deviceId}`): DeviceRecord => ({
        userId,
        deviceId,
        provider: "webpush",
        token,
        registeredAtMs: 1_000,
      });
      const byId = (list: DeviceRecord[]) => [...list].sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1));

      it("put replaces by (user, device), list is per user, remove deletes", async (ctx) => {
        const h = await setup(ctx);
        const [u, v] = [h.id("u"), h.id("u0")];
        await h.b.devices.put(device(u, "laptop"));
        await h.b.devices.put(device(u, "phone"));
        await h.b.devices.put(device(v, "phone"));
        expect(byId(await h.b.devices.list(u))).toEqual([device(u, "laptop"), device(u, "phone")]);

        const rotated = {
          ...device(u, "phone", "new-token"),
          provider: "apns" as const,
          registeredAtMs: 2_000,
        };
        await h.b.devices.put(rotated);
        expect(byId(await h.b.devices.list(u))).toEqual([device(u, "laptop"), rotated]);

        await h.b.devices.remove(u, "laptop");
        await h.b.devices.remove(u, "never-registered");
        expect(await h.b.devices.list(u)).toEqual([rotated]);
        expect(await h.b.devices.list(v)).toEqual([device(v, "phone")]);
        expect(await h.b.devices.list(h.id("nobody"))).toEqual([]);
      });

      itUnless("devices-list-omits-non-bmp-device-ids")(
        // Device ids are the registering service's choice (RegisterDevice checks only that one is set):
        // 𠮷 (U+20BB7, a common name character) or an emoji are as valid as ASCII.
        "list() includes devices whose ids start outside the Basic Multilingual Plane",
        async (ctx) => {
          const h = await setup(ctx);
          const u = h.id("u");
          const devices = [
            device(u, "laptop"),
            device(u, "\u{1F4F1} phone"),
            device(u, "\u{20BB7}\u7530's tablet"),
          ];
          for (const d of devices) await h.b.devices.put(d);
          expect(byId(await h.b.devices.list(u))).toEqual(byId(devices));
        },
      );
    });
  });
}
