import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Database, open, type RootDatabase } from "lmdb";
import { afterEach, describe, expect, it } from "vitest";
import type { AppendResult, MessageDraft } from "../types.js";
import { EmbeddedLog } from "./log.js";
import type { Key } from "./store.js";
import { SYNC_WRITES_MAX, TurnCommits } from "./turn-commits.js";

const opened: Array<{ root: RootDatabase; dir: string }> = [];

async function fresh() {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-turn-commits-"));
  const root = open({ path: join(dir, "t.mdb"), noSubdir: true, maxDbs: 4 });
  opened.push({ root, dir });
  const db = root.openDB<number, string>({ name: "values" });
  const txns = () => (root.getStats() as { lastTxnId: number }).lastTxnId;
  return { root, db, txns, turns: new TurnCommits(root) };
}

afterEach(async () => {
  for (const { root, dir } of opened.splice(0)) {
    await root.close();
    await rm(dir, { recursive: true, force: true });
  }
});

const nextTurn = () => new Promise((r) => setImmediate(r));

describe("TurnCommits", () => {
  it("commits the writes of one turn in one transaction, in order, before anyone hears", async () => {
    const { db, txns, turns } = await fresh();
    const before = txns();
    const seen: Array<number | undefined> = [];
    const writes = [1, 2, 3].map((i) =>
      turns.write((w) => w.put(db, "k", i)).then(() => seen.push(db.get("k"))),
    );
    expect(db.get("k")).toBeUndefined(); // nothing before the end of the turn
    await Promise.all(writes);
    expect(seen).toEqual([3, 3, 3]); // the last write of the turn wins, and all resolve after it
    expect(txns() - before).toBe(1);

    await turns.write((w) => w.put(db, "k", 4));
    await turns.write((w) => w.put(db, "k", 5));
    expect(db.get("k")).toBe(5);
    expect(txns() - before).toBe(3); // one per turn
    expect(turns.stats).toEqual({ sync: 3, queued: 0 });
  });

  it("a large turn goes to LMDB's writer thread, and turns after it wait for it: in order", async () => {
    const { db, txns, turns } = await fresh();
    const before = txns();
    const large = Array.from({ length: SYNC_WRITES_MAX + 1 }, (_, i) =>
      turns.write((w) => w.put(db, `big${i}`, i)),
    );
    await nextTurn(); // the large turn is queued, not yet committed
    const small = turns.write((w) => w.put(db, "big0", -1)); // overwrites a value of the large turn
    await Promise.all([...large, small]);
    expect(db.get("big0")).toBe(-1); // committed after the large turn, not before it
    expect(db.get(`big${SYNC_WRITES_MAX}`)).toBe(SYNC_WRITES_MAX);
    // The large turn was queued; the small one too unless the large one had already finished.
    expect(turns.stats.queued).toBeGreaterThanOrEqual(1);
    expect(turns.stats.sync + turns.stats.queued).toBe(2);
    // lmdb-js may put both queued turns in one transaction (in order); never more than one each.
    expect(txns() - before).toBeGreaterThanOrEqual(1);
    expect(txns() - before).toBeLessThanOrEqual(2);
    const syncBefore = turns.stats.sync;
    await turns.write((w) => w.put(db, "after", 1)); // nothing in flight: synchronous again
    expect(turns.stats.sync).toBe(syncBefore + 1);
  });

  it("a failed write fails its whole turn, commits none of it, and refuses every later turn", async () => {
    const { db, turns } = await fresh();
    const good = turns.write((w) => w.put(db, "a", 1));
    const bad = turns.write(() => {
      throw new Error("broken value");
    });
    await expect(bad).rejects.toThrow("broken value");
    await expect(good).rejects.toThrow("broken value");
    expect(db.get("a")).toBeUndefined();
    await nextTurn();
    // Its writes' seqs were taken in memory: a later turn committed would leave a gap below its own.
    await expect(turns.write((w) => w.put(db, "a", 2))).rejects.toThrow(
      expect.objectContaining({ reason: "STORAGE_FAILED" }),
    );
    expect(db.get("a")).toBeUndefined();
  });

  it("after a failure elsewhere (fail()), refuses the turn queued and every later one, and no refusal goes unhandled", async () => {
    const { db, turns } = await fresh();
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const queued = turns.write((w) => w.put(db, "b", 1));
      turns.fail(new Error("a commit of another store failed"));
      await expect(queued).rejects.toThrow(expect.objectContaining({ reason: "STORAGE_FAILED" }));
      // Refused at once, and left alone (as the guard does once the backend failed): nothing unhandled.
      void turns.write((w) => w.put(db, "b", 2));
      await nextTurn();
      await nextTurn();
      expect(db.get("b")).toBeUndefined();
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });

  it("close commits what is queued and refuses more", async () => {
    const { db, turns } = await fresh();
    const queued = turns.write((w) => w.put(db, "q", 7));
    turns.close();
    await queued;
    expect(db.get("q")).toBe(7);
    await expect(turns.write((w) => w.put(db, "q", 8))).rejects.toThrow(/closed/);
    expect(db.get("q")).toBe(7);
  });

  it("a turn LMDB commits after a failed one is not acknowledged: its seqs lie above the lost ones", async () => {
    // A root whose asynchronous commits (batch) settle when the test says: LMDB's writer thread
    // failing one transaction and committing the next one queued behind it.
    const batches: Array<{ resolve: () => void; reject: (err: unknown) => void }> = [];
    const root = {
      transactionSync: (fn: () => void) => fn(),
      batch: (fn: () => void) => {
        fn();
        return new Promise<boolean>((resolve, reject) => {
          batches.push({ resolve: () => resolve(true), reject });
        });
      },
    } as unknown as RootDatabase;
    const db = {
      get: () => undefined,
      getKeys: () => [],
      getRange: () => [],
      doesExist: () => false,
      put: () => Promise.resolve(true),
      putSync: () => true,
    } as unknown as Database<never, Key>;
    const turns = new TurnCommits(root);
    const log = new EmbeddedLog(
      db,
      db,
      db,
      db,
      turns,
      (write) => write(),
      () => false,
      () => undefined,
    );
    const draft = (i: number): MessageDraft => ({
      conversationId: "c",
      messageId: `m${i}`,
      sender: "alice",
      clientMsgId: `k${i}`,
      body: "x",
      createdAtMs: 1,
    });
    const outcome = (p: Promise<AppendResult>) =>
      p.then(
        (r) => `acked seq ${r.message.seq}`,
        () => "failed",
      );
    // Turn A: more writes than a synchronous commit takes: LMDB's thread.
    const first = Array.from({ length: SYNC_WRITES_MAX + 1 }, (_, i) => outcome(log.append(draft(i))));
    await nextTurn();
    // Turn B, while A is in flight: queued behind it.
    const second = outcome(log.append(draft(100)));
    await nextTurn();
    expect(batches).toHaveLength(2);
    batches[0]!.reject(new Error("EIO"));
    batches[1]!.resolve(); // LMDB committed B after A failed
    expect(new Set(await Promise.all(first))).toEqual(new Set(["failed"]));
    expect(await second).toBe("failed"); // seq 26 would have been acked, seqs 1-25 lost for good
    expect(await outcome(log.append(draft(200)))).toBe("failed");
  });

  it("settled() waits for every turn queued so far, and never rejects", async () => {
    const { db, turns } = await fresh();
    expect(await turns.settled()).toBeUndefined(); // nothing queued
    const large = Array.from({ length: SYNC_WRITES_MAX + 1 }, (_, i) =>
      turns.write((w) => w.put(db, `s${i}`, i)),
    );
    const settled = turns.settled();
    await settled;
    expect(db.get(`s${SYNC_WRITES_MAX}`)).toBe(SYNC_WRITES_MAX);
    await Promise.all(large);
    const bad = turns.write(() => {
      throw new Error("broken");
    });
    await expect(turns.settled()).resolves.toBeUndefined();
    await expect(bad).rejects.toThrow("broken");
  });
});
