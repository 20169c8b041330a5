/**
 * What the backend contract cannot see, because the distributed backend has no such thing: the
 * embedded log's hand-over before commit (ConsumeOptions.beforeCommit), its value encoding, and its
 * push job store's refusal of a job added twice.
 */
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { open } from "lmdb";
import { afterEach, describe, expect, it, vi } from "vitest";
import { inboxWriter, until } from "../../../test/helpers/embedded-router.js";
import { Code } from "../../lib/errors.js";
import type { Closeable, MessageDraft, PushJob } from "../types.js";
import { DATABASES_MAX } from "./backup.js";
import { EmbeddedBackends, type EmbeddedOptions } from "./index.js";
import type { EmbeddedLog } from "./log.js";
import { buildNewestFirstIndex } from "./membership.js";
import { PUSH_JOB_KEYS_KEPT_MS } from "./push.js";
import type { Key } from "./store.js";

const opened: Array<{ backends: EmbeddedBackends; dir: string }> = [];

async function openBackends(options: Partial<EmbeddedOptions> = {}): Promise<EmbeddedBackends> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-log-"));
  const backends = new EmbeddedBackends({ dataDir: dir, onFatal: (err) => console.error(err), ...options });
  opened.push({ backends, dir });
  return backends;
}

afterEach(async () => {
  for (const { backends, dir } of opened.splice(0)) {
    await backends.close();
    await rm(dir, { recursive: true, force: true });
  }
});

let drafts = 0;
const draft = (conversationId: string): MessageDraft => {
  drafts++;
  return {
    conversationId,
    messageId: `m${drafts}`,
    sender: "alice",
    clientMsgId: `c${drafts}`,
    body: `body ${drafts}`,
    createdAtMs: 1_800_000_000_000 + drafts,
  };
};

describe("embedded log: messages handed over before their commit", () => {
  it("a consumer waiting at the end gets the message before its append resolves, with a committed promise", async () => {
    const backends = await openBackends();
    const seenBeforeAck: boolean[] = [];
    let acked = false;
    const consumer: Closeable = await backends.log.consume(
      "early",
      async (batch) => {
        seenBeforeAck.push(!acked);
        for (const m of batch) {
          expect(m.committed).toBeInstanceOf(Promise);
          await m.committed;
          // Durable once committed resolves: readable through the store.
          expect((await backends.messages.getMany([m]))[0]?.messageId).toBe(m.messageId);
        }
      },
      { beforeCommit: true },
    );
    await new Promise((r) => setTimeout(r, 20)); // the consumer is waiting at the end
    await backends.log.append(draft("c1"));
    acked = true;
    await until(() => seenBeforeAck.length === 1);
    expect(seenBeforeAck).toEqual([true]);
    await consumer.close();
  });

  it("the handler's writes join the message's commit: one transaction per message instead of two", async () => {
    const transactionsPer = async (beforeCommit: boolean) => {
      const backends = await openBackends();
      const { delivered, handler } = inboxWriter(backends);
      const consumer = await backends.log.consume("router", handler, { beforeCommit });
      await new Promise((r) => setTimeout(r, 20));
      // The first message of each value shape also stores that shape (shared structures): warm up.
      await backends.log.append(draft("c0"));
      await until(() => delivered.length === 1);
      const before = backends.commits;
      for (let i = 1; i <= 20; i++) {
        await backends.log.append(draft("c1"));
        await until(() => delivered.length === i + 1);
      }
      const used = backends.commits - before;
      await consumer.close();
      // Every message reached bob's inbox, in order, once.
      expect((await backends.inbox.read("bob", 0, 100)).map((e) => [e.conversationId, e.seq])).toEqual([
        ["c0", 1],
        ...Array.from({ length: 20 }, (_, i) => ["c1", i + 1]),
      ]);
      return used;
    };
    const early = await transactionsPer(true);
    const late = await transactionsPer(false);
    expect(early).toBeLessThanOrEqual(21); // 20, and perhaps the last position on its own
    expect(late).toBeGreaterThanOrEqual(40);
  });

  it("appends while the consumer is busy are handed over in order, each once, and all reach the inbox", async () => {
    const backends = await openBackends();
    const { delivered, handler } = inboxWriter(backends);
    const consumer = await backends.log.consume("router", handler, { beforeCommit: true });
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => backends.log.append(draft(`c${i % 4}`))),
    );
    await until(() => delivered.length >= 200);
    expect(delivered.map((m) => m.messageId).sort()).toEqual(results.map((r) => r.message.messageId).sort());
    for (const c of ["c0", "c1", "c2", "c3"])
      expect(delivered.filter((m) => m.conversationId === c).map((m) => m.seq)).toEqual(
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
    expect((await backends.inbox.read("bob", 0, 500)).length).toBe(200);
    await consumer.close();
  });

  it("a consumer closed and reopened resumes after what it handled (its position rode in the messages' commits)", async () => {
    const backends = await openBackends();
    const first = inboxWriter(backends);
    const a = await backends.log.consume("router", first.handler, { beforeCommit: true });
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 1; i <= 5; i++) {
      await backends.log.append(draft("c1"));
      await until(() => first.delivered.length === i);
    }
    await a.close();
    await backends.log.append(draft("c1"));
    const second = inboxWriter(backends);
    const b = await backends.log.consume("router", second.handler, { beforeCommit: true });
    await until(() => second.delivered.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(second.delivered.map((m) => m.seq)).toEqual([6]);
    await b.close();
  });
});

describe("embedded log: batches read from the log", () => {
  it("hold at most about a MiB of bodies, so a consumer catching up on large messages decodes few at a time", async () => {
    const backends = await openBackends();
    const large = "x".repeat(300_000);
    for (let i = 0; i < 8; i++) await backends.log.append({ ...draft("c1"), body: large });
    for (let i = 0; i < 3; i++) await backends.log.append(draft("c1"));
    const sizes: number[] = [];
    let seen = 0;
    const consumer = await backends.log.consume("catching-up", async (batch) => {
      sizes.push(batch.length);
      seen += batch.length;
    });
    await until(() => seen === 11);
    await consumer.close();
    // Four bodies of 300,000 characters reach the bound; the small ones after the last large one
    // share its batch.
    expect(sizes).toEqual([4, 4, 3]);
  });

  it("let a consumer that takes messages before their commit catch up while appends go on: each once, in order", async () => {
    const backends = await openBackends();
    const large = "x".repeat(400_000);
    for (let i = 0; i < 6; i++) await backends.log.append({ ...draft("c2"), body: large });
    const router = inboxWriter(backends);
    const consumer = await backends.log.consume("router", router.handler, { beforeCommit: true });
    // Appends while it reads the backlog three large messages at a time: some are handed over
    // before their commit, the rest read from the log after the backlog.
    await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        backends.log.append({ ...draft("c2"), body: i % 3 === 0 ? large : "small" }),
      ),
    );
    await until(() => router.delivered.length >= 30);
    await new Promise((r) => setTimeout(r, 50));
    await consumer.close();
    expect(router.delivered.map((m) => m.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
  });
});

describe("embedded log: a membership change waits for the router (ADR 0012)", () => {
  it("an addition is stored only once the consumer that addresses messages has handled what came before", async () => {
    const backends = await openBackends();
    const group = (
      await backends.membership.createConversation(
        { id: "g:1", kind: "group", name: "g", owner: "ann", open: true, createdAtMs: 1 },
        ["ann", "bob"],
      )
    ).record;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const addressed: string[][] = [];
    const consumer = await backends.log.consume(
      "router",
      async (batch) => {
        await gate;
        for (const _ of batch) addressed.push(await backends.membership.members(group.id));
      },
      { addressesMembers: true },
    );
    await backends.log.append(draft(group.id));
    let added = false;
    const adding = backends.membership.addMembers(group.id, ["cat"], 10).then(() => {
      added = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    const addedWhileHeld = added;
    release();
    await adding;
    expect(addedWhileHeld).toBe(false); // the router was still at the message
    expect(addressed).toEqual([["ann", "bob"]]); // addressed as before the addition
    expect((await backends.membership.members(group.id)).sort()).toEqual(["ann", "bob", "cat"]);
    await consumer.close();
  });

  it("waits for no other consumer, and not past its bound for one that keeps failing", async () => {
    const backends = await openBackends();
    const log = backends.log as EmbeddedLog;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const other = await backends.log.consume("events", () => gate);
    await backends.log.append(draft("g:2"));
    expect(await log.untilAddressed(1_000)).toBe(true);
    const failing = await backends.log.consume(
      "router",
      async () => {
        throw new Error("down");
      },
      { addressesMembers: true },
    );
    const startedAt = Date.now();
    expect(await log.untilAddressed(100)).toBe(false);
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    await failing.close();
    expect(await log.untilAddressed(100)).toBe(true); // no consumer left to wait for
    release();
    await other.close();
  });

  it("a change that stopped waiting for a failing router is made, and said so", async () => {
    const lagged: Array<[string, number]> = [];
    const backends = await openBackends({ onRouterLagged: (c, ms) => lagged.push([c, ms]) });
    await backends.membership.createConversation(
      { id: "g:3", kind: "group", name: "g", owner: "ann", open: true, createdAtMs: 1 },
      ["ann"],
    );
    const failing = await backends.log.consume(
      "router",
      async () => {
        throw new Error("down");
      },
      { addressesMembers: true },
    );
    await backends.log.append(draft("g:3"));
    await backends.membership.addMembers("g:3", ["bob"], 10);
    expect((await backends.membership.members("g:3")).sort()).toEqual(["ann", "bob"]);
    expect(lagged).toEqual([["g:3", 2_000]]);
    await failing.close();
  });
});

describe("embedded membership: a user in many conversations", () => {
  it("lists the newest of 12,000 by their index, created in any order and in the same millisecond", async () => {
    const backends = await openBackends();
    const count = 12_000;
    // Created at times in no order of their ids, twenty at a time in the same millisecond.
    const created = (i: number) => 1_800_000_000_000 + ((i * 7_919) % count) - (((i * 7_919) % count) % 20);
    const ids = Array.from({ length: count }, (_, i) => `g:${String(i).padStart(6, "0")}`);
    for (let i = 0; i < count; i += 500)
      await Promise.all(
        ids
          .slice(i, i + 500)
          .map((id, k) =>
            backends.membership.createConversation(
              { id, kind: "group", name: id, owner: "bot", open: false, createdAtMs: created(i + k) },
              ["bot", "other"],
            ),
          ),
      );
    // Every record read and sorted: what the index must agree with.
    const expected = ids
      .map((id, i) => ({ id, createdAtMs: created(i) }))
      .sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1));
    const listed = await backends.membership.conversationsOf("bot", 50);
    expect(listed.map((r) => [r.id, r.createdAtMs])).toEqual(
      expected.slice(0, 50).map((e) => [e.id, e.createdAtMs]),
    );
    // One the user left is no longer listed, and the next takes its place.
    const newest = expected[0]!.id;
    await backends.membership.removeMember(newest, "bot");
    expect((await backends.membership.conversationsOf("bot", 3)).map((r) => r.id)).toEqual(
      expected.slice(1, 4).map((e) => e.id),
    );
    expect(await backends.membership.conversationsOf("bot", 0)).toEqual([]);
    // An added member finds the group at its creation time, among the rest.
    const middle = expected[100]!;
    await backends.membership.addMembers(middle.id, ["late"], 10);
    await backends.membership.createConversation(
      {
        id: "g:newest",
        kind: "group",
        name: "n",
        owner: "late",
        open: false,
        createdAtMs: 1_900_000_000_000,
      },
      ["late"],
    );
    expect((await backends.membership.conversationsOf("late", 5)).map((r) => r.id)).toEqual([
      "g:newest",
      middle.id,
    ]);
  });

  it("builds the index by creation time a chunk a commit, every entry once", async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-build-"));
    const raw = open({ path: join(dir, "switchboard.mdb"), noSubdir: true, maxDbs: DATABASES_MAX });
    try {
      const byId = raw.openDB<number, Key>({ name: "user_conversations" });
      const byTime = raw.openDB<1, Key>({ name: "user_conversations_by_time" });
      for (let i = 0; i < 30; i++) await byId.put([`u${i % 4}`, `g:${i}`], 100 + (i % 5));
      // 30 entries in chunks of 7 (and of 6, 10 and 30: a chunk ending exactly at the end, or not).
      for (const chunk of [7, 6, 10, 30]) {
        expect(buildNewestFirstIndex(byId, byTime, chunk)).toBe(30);
        const keys = [...byTime.getKeys()];
        expect(keys).toHaveLength(30);
        expect(new Set(keys.map((k) => JSON.stringify(k)))).toEqual(
          new Set(
            [...byId.getRange()].map(({ key, value }) =>
              JSON.stringify([(key as string[])[0], -value, (key as string[])[1]]),
            ),
          ),
        );
      }
    } finally {
      await raw.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("opening a data dir of the format before builds the index by creation time, whatever it held", async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-index-"));
    let backends = new EmbeddedBackends({ dataDir: dir, onFatal: (err) => console.error(err) });
    for (let i = 0; i < 30; i++)
      await backends.membership.createConversation(
        { id: `g:${i}`, kind: "group", name: "g", owner: "ann", open: false, createdAtMs: 1_000 + (i % 7) },
        ["ann", "bob"],
      );
    await backends.close();
    // As format 1 left it: no index by time (bob's), or one that a build cut short began and an older
    // build then let go stale (ann left g:0 and g:1 without it knowing).
    const raw = open({ path: join(dir, "switchboard.mdb"), noSubdir: true, maxDbs: DATABASES_MAX });
    const byTime = raw.openDB<1, Key>({ name: "user_conversations_by_time" });
    const byId = raw.openDB<number, Key>({ name: "user_conversations" });
    await byId.remove(["ann", "g:0"]);
    await byId.remove(["ann", "g:1"]);
    for (const key of byTime.getKeys({ start: ["bob", -Number.MAX_SAFE_INTEGER], end: ["bob", 1] }))
      await byTime.remove(key);
    await raw.openDB({ name: "meta", sharedStructuresKey: Symbol.for("structures") }).put("data-format", 1);
    await raw.close();

    backends = new EmbeddedBackends({ dataDir: dir, onFatal: (err) => console.error(err) });
    opened.push({ backends, dir });
    const newest = (n: number) =>
      Array.from({ length: 30 }, (_, i) => ({ id: `g:${i}`, at: 1_000 + (i % 7) }))
        .sort((a, b) => b.at - a.at || (a.id < b.id ? -1 : 1))
        .map((e) => e.id)
        .slice(0, n);
    expect((await backends.membership.conversationsOf("bob", 30)).map((r) => r.id)).toEqual(newest(30));
    expect((await backends.membership.conversationsOf("ann", 30)).map((r) => r.id)).toEqual(
      newest(30).filter((id) => id !== "g:0" && id !== "g:1"),
    );
  });
});

describe("embedded values: shared structures", () => {
  it("values written before (key names inline) still read, and values written now are smaller", async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-shapes-"));
    const path = join(dir, "switchboard.mdb");
    const old: MessageDraft & { seq: number } = { ...draft("c9"), seq: 1 };
    // As an embedded store before shared structures wrote them: plain msgpack records.
    const raw = open({ path, noSubdir: true, maxDbs: DATABASES_MAX });
    await raw.openDB({ name: "messages" }).put(["c9", 1], old);
    await raw.openDB({ name: "log" }).put(1, ["c9", 1]);
    await raw
      .openDB({ name: "inbox" })
      .put(["bob", 1], { conversationId: "c9", seq: 1, messageId: old.messageId });
    await raw.close();

    const backends = new EmbeddedBackends({ dataDir: dir, onFatal: (err) => console.error(err) });
    opened.push({ backends, dir });
    const appended = await backends.log.append(draft("c9"));
    expect(appended.message.seq).toBe(2);
    expect((await backends.messages.history("c9", { limit: 10 })).messages).toEqual([old, appended.message]);
    await backends.inbox.append([
      { userId: "bob", conversationId: "c9", seq: 2, messageId: appended.message.messageId },
    ]);
    expect((await backends.inbox.read("bob", 0, 10)).map((e) => [e.cursor, e.seq, e.messageId])).toEqual([
      [1, 1, old.messageId],
      [2, 2, appended.message.messageId],
    ]);
    await backends.close();

    const after = open({ path, noSubdir: true, maxDbs: DATABASES_MAX });
    const messages = after.openDB({ name: "messages" });
    const [before, now] = [messages.getBinary(["c9", 1])!.length, messages.getBinary(["c9", 2])!.length];
    await after.close();
    expect(now).toBeLessThan(before / 2); // the shape's id instead of its seven key names
  });
});

describe("embedded push jobs: a job added twice is stored once", () => {
  const job = (id: string, key?: string): PushJob => ({
    id,
    ...(key === undefined ? {} : { key }),
    provider: "webhook",
    token: "https://hooks.example.com/x",
    device: null,
    notification: {
      id,
      userId: "erin",
      conversationId: "dm:erin:frank",
      title: "frank",
      body: "hi",
      ttlSeconds: 60,
      messageCount: 1,
    },
    attempts: 0,
    notBeforeMs: 0,
    createdAtMs: 0,
  });
  const listed = async (b: EmbeddedBackends) => (await b.pushJobs!.list(100)).map((j) => j.id).sort();

  it("refuses a key added within the hour, also after a reopen, and takes it again after", async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-push-"));
    try {
      let now = 1_800_000_000_000;
      vi.spyOn(Date, "now").mockImplementation(() => now);
      const first = new EmbeddedBackends({ dataDir: dir });
      expect(await first.pushJobs.add(job("a1", "a"))).toBe(true);
      expect(await first.pushJobs.add(job("a2", "a"))).toBe(false);
      expect(await first.pushJobs.add(job("b1", "b"))).toBe(true);
      await first.pushJobs.remove("a1"); // delivered: the key stays
      await first.close();
      const second = new EmbeddedBackends({ dataDir: dir });
      now += PUSH_JOB_KEYS_KEPT_MS - 1;
      expect(await second.pushJobs.add(job("a3", "a"))).toBe(false);
      now += 2;
      expect(await second.pushJobs.add(job("a4", "a"))).toBe(true);
      expect(await listed(second)).toEqual(["a4", "b1"]);
      await second.close();
    } finally {
      vi.restoreAllMocks();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("keeps at most pushJobKeysMax keys, letting the oldest go first", async () => {
    const backends = await openBackends({ pushJobKeysMax: 3 });
    for (const key of ["k1", "k2", "k3", "k4"]) expect(await backends.pushJobs.add(job(key, key))).toBe(true);
    // k1 went to make room for k4; the three newest are still refused.
    expect(await backends.pushJobs.add(job("k1-again", "k1"))).toBe(true);
    for (const key of ["k3", "k4", "k1"])
      expect(await backends.pushJobs.add(job(`${key}-x`, key))).toBe(false);
    expect(await backends.pushJobs.add(job("k2-again", "k2"))).toBe(true);
  });
});

describe("embedded disk space: new messages refused while the disk is nearly full", () => {
  it("refuses new messages with STORAGE_FULL, answers resends and reads, and takes messages again once space is back", async () => {
    const free = { bytes: 1_000_000_000 };
    const fatal = vi.fn();
    const changes: boolean[] = [];
    const backends = await openBackends({
      diskReserveBytes: 100_000_000,
      availableBytes: () => free.bytes,
      onFatal: fatal,
      onDiskFull: (full) => changes.push(full),
    });
    const first = draft("dm:alice~bob");
    expect((await backends.log.append(first)).message.seq).toBe(1);

    free.bytes = 99_999_999;
    backends.diskSpace.check();
    const refused = draft("dm:alice~bob");
    await expect(backends.log.append(refused)).rejects.toMatchObject({
      reason: "STORAGE_FULL",
      code: Code.RESOURCE_EXHAUSTED,
      retryAfterMs: 5_000,
    });
    // A resend of a stored message is answered: it writes nothing.
    expect(await backends.log.append({ ...first, messageId: "another id" })).toMatchObject({
      duplicate: true,
      message: { seq: 1, messageId: first.messageId },
    });
    // Everything else goes on, on the reserve.
    expect(await backends.receipts.raise("dm:alice~bob", "bob", "read", 1)).toBe(true);
    expect((await backends.messages.history("dm:alice~bob", { limit: 10 })).messages).toHaveLength(1);

    free.bytes = 105_000_000; // above the reserve, within its margin: still refused
    backends.diskSpace.check();
    await expect(backends.log.append(refused)).rejects.toMatchObject({ reason: "STORAGE_FULL" });
    free.bytes = 110_000_000;
    backends.diskSpace.check();
    // The refusal took no seq: the message sent again gets the next one, with no gap.
    expect((await backends.log.append(refused)).message).toMatchObject({
      seq: 2,
      messageId: refused.messageId,
    });
    expect(await backends.messages.lastSeq("dm:alice~bob")).toBe(2);
    expect(changes).toEqual([true, false]);
    expect(fatal).not.toHaveBeenCalled();
  });
  it("refuses to open on a disk with no room for the database, and creates nothing there", async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-full-"));
    try {
      expect(
        () =>
          new EmbeddedBackends({ dataDir: dir, diskReserveBytes: 100_000_000, availableBytes: () => 4096 }),
      ).toThrow(/the disk of data dir .* is full \(4096 bytes free; opening the database needs 1048576\)/);
      expect(await readdir(dir)).toEqual([]);
      // Room for it: it opens (and with the check off, whatever the disk says).
      await new EmbeddedBackends({
        dataDir: dir,
        diskReserveBytes: 100_000_000,
        availableBytes: () => 2_000_000,
      }).close();
      await new EmbeddedBackends({ dataDir: dir, diskReserveBytes: 0, availableBytes: () => 0 }).close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
