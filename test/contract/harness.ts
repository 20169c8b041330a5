/**
 * The backend contract's harness: the types a backend's test file implements (`OpenBackends`), the
 * helpers every part of the suite uses, and `contractKit`, which gives the parts their per-test setup
 * (a fresh namespace, `reopen`, consumers closed when the test ends) and bounded waiting. The suite
 * itself is backends.contract.ts and the files it composes.
 */

import { randomBytes } from "node:crypto";
import { expect, it, type TestContext } from "vitest";
import type {
  Backends,
  BatchHandler,
  Closeable,
  ConsumeOptions,
  MessageDraft,
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
  /**
   * Opens a second instance beside the first on the same data, as another process of the platform
   * would. Leave it out for a backend whose instances share nothing across processes.
   */
  peer?: () => Promise<Backends>;
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
export const nextMessageId = () => String(messageIdBase + ++messageIds);

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function draft(
  conversationId: string,
  sender: string,
  clientMsgId: string,
  body = clientMsgId,
): MessageDraft {
  return { conversationId, sender, clientMsgId, body, messageId: nextMessageId(), createdAtMs: Date.now() };
}

/** A deterministic permutation, so a failure reproduces. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
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

export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
export const seqs = (messages: readonly StoredMessage[]) => messages.map((m) => m.seq);

/** The error `promise` rejects with; fails the test if it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection, the promise resolved");
}

export interface Attempt {
  messages: StoredMessage[];
  threw: boolean;
}

/**
 * A consumer group member that records what it is handed and checks the order guarantee on the fly:
 * per conversation, after the first delivery (a resumed group starts mid-conversation), a seq beyond
 * the highest seen so far must be exactly the next one (re-deliveries of older seqs are allowed:
 * at-least-once), and seqs increase within a batch. Where a conversation starts is checked by tests.
 */
export class Collector {
  readonly attempts: Attempt[] = [];
  /** Messages of batches whose handler resolved, in delivery order (re-deliveries included). */
  readonly committed: StoredMessage[] = [];
  readonly violations: string[] = [];
  /** Return true to make the handler throw for this batch. */
  failWhen: (batch: StoredMessage[]) => boolean = () => false;
  /** How long the handler takes over this batch (ms). */
  takes: (batch: StoredMessage[]) => number = () => 0;
  consumer: Closeable | undefined;
  private readonly highest = new Map<string, number>();

  constructor(private readonly ns: string) {}

  readonly handler: BatchHandler = async (batch) => {
    // The log's messages as stored; `recipients` (a distributed-log extra) are checked elsewhere.
    const mine = batch
      .filter((m) => m.conversationId.startsWith(this.ns))
      .map(({ recipients: _, committed: __, ...m }): StoredMessage => m);
    if (mine.length === 0) return;
    this.check(mine);
    const ms = this.takes(mine);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
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

export interface Harness {
  readonly ns: string;
  /** The current instance (replaced by `reopen`). */
  readonly b: Backends;
  readonly durable: boolean;
  /** `${ns}_${name}`. */
  id(name: string): string;
  /** Closes the current instance (consumers and subscriptions first) and opens the same data again. */
  reopen(): Promise<Backends>;
  /**
   * A second instance beside `b` on the same data (another process), closed when the test ends, or
   * undefined if the backend has none (OpenedBackends.peer).
   */
  peer(): Promise<Backends | undefined>;
  /** Starts a consumer in `group` (a name local to the test) that is closed when the test ends. */
  consume(group: string, collector?: Collector, options?: ConsumeOptions): Promise<Collector>;
  /** Closes `closeable` when the test ends (or at the next reopen); the returned handle closes it once. */
  track(closeable: Closeable): Closeable;
  eventually(assertion: () => void | Promise<void>): Promise<void>;
}

export interface ContractKit {
  /** A fresh namespace and backend instance for this test, closed when it ends. */
  setup(ctx: TestContext): Promise<Harness>;
  /** What the log holds for one conversation, read through a fresh consumer group. */
  readLog(h: Harness, conversationId: string): Promise<StoredMessage[]>;
  /** `it`, or `it.fails` while the backend is known to have `bug`. */
  itUnless(bug: KnownFailure): typeof it | typeof it.fails;
}

export function contractKit(name: string, open: OpenBackends, options: ContractOptions = {}): ContractKit {
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
      async peer() {
        if (!opened.peer) return undefined;
        const peer = await opened.peer();
        harness.track(peer);
        return peer;
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
  return { setup, readLog, itUnless };
}
