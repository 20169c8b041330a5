/**
 * What keeps the embedded backend bounded and its consumers alive: retention of the dedupe keys, log
 * entries and inbox index (retention.ts), the in-memory counters (counters.ts), a consumer whose
 * read of the log fails, and the id service's high-water mark.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { open } from "lmdb";
import { afterEach, describe, expect, it } from "vitest";
import { inboxWriter, until } from "../../../test/helpers/embedded-router.js";
import { expectNoIdReissuedAfterRestart } from "../../../test/helpers/id-high-water.js";
import type { LoggedMessage, MessageDraft } from "../types.js";
import { DATABASE_FILE, DATABASES_MAX } from "./backup.js";
import { EmbeddedBackends, type EmbeddedOptions } from "./index.js";
import type { EmbeddedLog } from "./log.js";

const dirs: string[] = [];
const opened: EmbeddedBackends[] = [];

async function scratch(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-bounds-"));
  dirs.push(dir);
  return dir;
}

function openAt(dataDir: string, options: Partial<EmbeddedOptions> = {}): EmbeddedBackends {
  const backends = new EmbeddedBackends({ dataDir, onFatal: (err) => console.error(err), ...options });
  opened.push(backends);
  return backends;
}

afterEach(async () => {
  for (const backends of opened.splice(0)) await backends.close();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const T0 = 1_800_000_000_000;
let drafts = 0;
const draft = (conversationId: string, clientMsgId = `c${++drafts}`, createdAtMs = T0): MessageDraft => ({
  conversationId,
  messageId: `m${++drafts}`,
  sender: "alice",
  clientMsgId,
  body: "hi",
  createdAtMs,
});

const embeddedLog = (b: EmbeddedBackends) => b.log as EmbeddedLog;
/** Keys of a database (shared structures' key aside). */
function keys(b: EmbeddedBackends, name: string): unknown[] {
  const root = (b as unknown as { root: ReturnType<typeof open> }).root;
  const db = root.openDB({ name, sharedStructuresKey: Symbol.for("structures") });
  return [...db.getKeys()].filter((k) => typeof k !== "symbol");
}

describe("embedded retention", () => {
  it("removes dedupe keys past the window, and log and inbox index entries every consumer passed; keeps messages and inboxes", async () => {
    const dataDir = await scratch();
    let now = T0;
    const options: Partial<EmbeddedOptions> = {
      dedupeWindowMs: 60_000,
      retention: { now: () => now, intervalMs: 3_600_000 }, // passes only when the test asks
    };
    let backends = openAt(dataDir, options);
    // A group that stopped at the start: it keeps the log entries, not the dedupe keys.
    await (await backends.log.consume("lagging", async () => undefined, { startAt: "latest" })).close();
    const router = inboxWriter(backends);
    let consumer = await backends.log.consume("router", router.handler, { beforeCommit: true });
    const first = [];
    for (let i = 0; i < 10; i++) first.push(await backends.log.append(draft("c1", `k${i}`)));
    await until(() => router.delivered.length === 10);
    await until(() => embeddedLog(backends).consumedUpTo() === 0); // "lagging"; the router stored 10

    // Within the window: nothing goes.
    now = T0 + 59_000;
    expect(await backends.retainNow()).toEqual({
      dedupeKeys: 0,
      logEntries: 0,
      inboxIndexEntries: 0,
      more: false,
    });
    expect((await backends.log.append(draft("c1", "k0"))).duplicate).toBe(true);

    // Past it: the dedupe keys go; the log entries stay for "lagging".
    now = T0 + 61_000;
    expect(await backends.retainNow()).toEqual({
      dedupeKeys: 10,
      logEntries: 0,
      inboxIndexEntries: 0,
      more: false,
    });
    expect(keys(backends, "dedupe")).toEqual([]);
    expect(keys(backends, "log")).toHaveLength(10);
    const lagging: LoggedMessage[] = [];
    const again = await backends.log.consume("lagging", async (batch) => void lagging.push(...batch));
    await until(() => lagging.length === 10);
    await again.close();
    await until(() => embeddedLog(backends).consumedUpTo() === 10); // the router's too

    // Every group passed them: the log entries and the inbox index go, but the last entry.
    expect(await backends.retainNow()).toEqual({
      dedupeKeys: 0,
      logEntries: 9,
      inboxIndexEntries: 9,
      more: false,
    });
    expect(keys(backends, "log")).toEqual([10]);
    expect(keys(backends, "inbox_by_message")).toEqual([["c1", 10, "bob"]]);
    // History and inbox are kept.
    expect((await backends.messages.history("c1", { limit: 100 })).messages).toHaveLength(10);
    expect(await backends.inbox.read("bob", 0, 100)).toHaveLength(10);

    // A resend after the window is a new message; the log goes on from where it was.
    const resent = await backends.log.append(draft("c1", "k0", now));
    expect(resent.duplicate).toBe(false);
    expect(resent.message.seq).toBe(11);
    await until(() => router.delivered.length === 11);
    await consumer.close();
    await backends.close();

    // Reopened: positions continue after the last one (kept), the router resumes after it.
    backends = openAt(dataDir, options);
    const resumed = inboxWriter(backends);
    consumer = await backends.log.consume("router", resumed.handler, { beforeCommit: true });
    await backends.log.append(draft("c2"));
    await until(() => resumed.delivered.length === 1);
    expect(resumed.delivered.map((m) => [m.conversationId, m.seq])).toEqual([["c2", 1]]);
    expect((await backends.inbox.read("bob", 11, 100)).map((e) => e.cursor)).toEqual([12]);
    expect((await backends.log.append(draft("c1", "k0"))).duplicate).toBe(true); // within the window again
    await consumer.close();
  });

  it("bounds each pass and goes on where it stopped", async () => {
    const dataDir = await scratch();
    const backends = openAt(dataDir, {
      dedupeWindowMs: 1,
      retention: { now: () => T0 + 1_000, intervalMs: 3_600_000, entriesPerPass: 4 },
    });
    const router = inboxWriter(backends);
    const consumer = await backends.log.consume("router", router.handler, { beforeCommit: true });
    for (let i = 0; i < 10; i++) await backends.log.append(draft(`c${i % 3}`));
    await until(() => router.delivered.length === 10);
    await until(() => embeddedLog(backends).consumedUpTo() === 10);
    const passes = [];
    for (let more = true; more; ) {
      const pass = await backends.retainNow();
      passes.push(pass);
      more = pass.more;
      expect(pass.dedupeKeys).toBeLessThanOrEqual(4);
      expect(pass.logEntries).toBeLessThanOrEqual(4);
    }
    expect(passes.reduce((n, p) => n + p.dedupeKeys, 0)).toBe(10);
    expect(passes.reduce((n, p) => n + p.logEntries, 0)).toBe(9);
    expect(keys(backends, "dedupe")).toEqual([]);
    expect(keys(backends, "inbox_by_message")).toHaveLength(1);
    await consumer.close();
  });

  it("reads the inbox index of earlier versions until every consumer passed what the log held, then drops it", async () => {
    const dataDir = await scratch();
    // As a version before 2026-12-05 left it: bob's entry for c1/1 indexed by user.
    const raw = open({ path: join(dataDir, DATABASE_FILE), noSubdir: true, maxDbs: DATABASES_MAX });
    await raw.openDB({ name: "messages" }).put(["c1", 1], { ...draft("c1"), seq: 1 });
    await raw.openDB({ name: "log" }).put(1, ["c1", 1]);
    await raw.openDB({ name: "inbox" }).put(["bob", 1], { conversationId: "c1", seq: 1, messageId: "m" });
    await raw.openDB({ name: "inbox_index" }).put(["bob", "c1", 1], 1);
    await raw.close();

    const backends = openAt(dataDir, { retention: { intervalMs: 3_600_000 } });
    // The router handling c1/1 again (its position was not stored): the same cursor, no new entry.
    const [entry] = await backends.inbox.append([
      { userId: "bob", conversationId: "c1", seq: 1, messageId: "m" },
    ]);
    expect(entry!.cursor).toBe(1);
    expect(await backends.inbox.read("bob", 0, 10)).toHaveLength(1);
    await backends.retainNow();
    expect(backends.inbox["readsLegacyIndex" as keyof typeof backends.inbox]).toBe(true);

    const router = inboxWriter(backends);
    const consumer = await backends.log.consume("router", router.handler);
    await until(() => router.delivered.length === 1);
    await until(() => embeddedLog(backends).consumedUpTo() === 1);
    expect(await backends.inbox.read("bob", 0, 10)).toHaveLength(1); // handled again: nothing new
    await backends.retainNow();
    expect(backends.inbox["readsLegacyIndex" as keyof typeof backends.inbox]).toBe(false);
    await consumer.close();
  });
});

describe("embedded counters", () => {
  it("keep a bounded number of conversations' seqs and users' heads, and reload the others from disk", async () => {
    const dataDir = await scratch();
    const backends = openAt(dataDir, { countersKeptMax: 4 });
    for (let round = 1; round <= 2; round++) {
      for (let i = 0; i < 20; i++) {
        const { message } = await backends.log.append(draft(`c${i}`));
        expect(message.seq).toBe(round);
        const [entry] = await backends.inbox.append([
          { userId: `u${i}`, conversationId: `c${i}`, seq: message.seq, messageId: message.messageId },
        ]);
        expect(entry!.cursor).toBe(round);
      }
      expect(embeddedLog(backends).lastSeqsKept).toBeLessThanOrEqual(8);
      expect((backends.inbox as unknown as { headsKept: number }).headsKept).toBeLessThanOrEqual(8);
    }
  });

  it("never drop a counter whose write is in flight: appends to many conversations before their commit", async () => {
    const dataDir = await scratch();
    const backends = openAt(dataDir, { countersKeptMax: 2 });
    // All in one turn of the event loop (the commit comes at its end), with microtasks between the
    // appends: the counters rotate meanwhile, and none may be reloaded from the disk before it.
    const results = [];
    for (let i = 0; i < 60; i++) {
      results.push(backends.log.append(draft(`c${i % 6}`)));
      for (let hop = 0; hop < 5; hop++) await Promise.resolve();
    }
    const appended = await Promise.all(results);
    for (let c = 0; c < 6; c++)
      expect(appended.filter((r) => r.message.conversationId === `c${c}`).map((r) => r.message.seq)).toEqual(
        Array.from({ length: 10 }, (_, i) => i + 1),
      );
  });
});

describe("embedded consumers", () => {
  it("a read of the log that fails is reported and retried, never a consumer stopped in silence", async () => {
    const dataDir = await scratch();
    const errors: Array<[string, unknown]> = [];
    const backends = openAt(dataDir, { onConsumerError: (group, err) => errors.push([group, err]) });
    await backends.log.append(draft("g1"));
    const second = await backends.log.append(draft("g1"));
    // Its row gone: the log entry points at a message that cannot be read (a damaged store).
    const root = (backends as unknown as { root: ReturnType<typeof open> }).root;
    const messages = root.openDB({ name: "messages", sharedStructuresKey: Symbol.for("structures") });
    await messages.remove(["g1", 2]);
    const handled: LoggedMessage[] = [];
    const consumer = await backends.log.consume("router", async (batch) => void handled.push(...batch));
    await until(() => errors.length >= 1);
    expect(errors[0]![0]).toBe("router");
    expect(String(errors[0]![1])).toMatch(/log entry 2 points at a missing message/);
    expect(handled).toEqual([]);
    // Repaired: the consumer, still there, reads on.
    await messages.put(["g1", 2], second.message);
    await until(() => handled.length === 2);
    await backends.log.append(draft("g1"));
    await until(() => handled.length === 3);
    await consumer.close();
  });
});

describe("embedded id high-water mark", () => {
  it("survives a close and reopen, so a restarted id service mints above what it issued", async () => {
    const dataDir = await scratch();
    let backends = openAt(dataDir);
    await expectNoIdReissuedAfterRestart(
      0,
      backends.idHighWater,
      async () => {
        await backends.close();
        backends = openAt(dataDir);
        return backends.idHighWater;
      },
      T0,
    );
  });
});
