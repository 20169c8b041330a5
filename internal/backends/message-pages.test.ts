import { describe, expect, it } from "vitest";
import { bodyBytes, getManyWithinBytes, historyWithinBytes } from "./message-pages.js";
import type { HistoryQuery, StoredMessage } from "./types.js";

/** A conversation of `sizes.length` messages (seq 1…), body i of sizes[i] `char`s; counts what it read. */
function conversation(sizes: number[], char = "x") {
  const all: StoredMessage[] = sizes.map((chars, i) => ({
    conversationId: "g:1",
    seq: i + 1,
    messageId: `m${i + 1}`,
    sender: "alice",
    clientMsgId: `c${i + 1}`,
    body: char.repeat(chars),
    createdAtMs: i,
  }));
  const read = { messages: 0, bytes: 0, calls: 0 };
  const count = (ms: StoredMessage[]) => {
    read.calls++;
    read.messages += ms.length;
    for (const m of ms) read.bytes += bodyBytes(m.body);
    return ms;
  };
  const store = {
    // As the stores do: after afterSeq oldest first, else the newest below beforeSeq; +1 for hasMore.
    history: async (_: string, q: HistoryQuery) => {
      const before = q.beforeSeq || Number.MAX_SAFE_INTEGER;
      const inRange = all.filter((m) => m.seq > (q.afterSeq ?? 0) && m.seq < before);
      const page = q.afterSeq ? inRange.slice(0, q.limit) : inRange.slice(-q.limit);
      return { messages: count(page), hasMore: inRange.length > q.limit };
    },
    getMany: async (keys: Array<{ seq: number }>) =>
      count(keys.flatMap((k) => all.filter((m) => m.seq === k.seq))),
  };
  return { store, read, all };
}

const seqs = (ms: StoredMessage[]) => ms.map((m) => m.seq);
/** The default bounds: 1 MiB of bodies a page, bodies of at most 100,000 characters. */
const MIB = { bytesMax: 1024 * 1024, bodyCharsMax: 100_000 };

describe("message pages bounded in bytes", () => {
  it("reads a page of large bodies no further than the budget plus one chunk", async () => {
    const { store, read } = conversation(Array.from({ length: 1_000 }, () => 100_000));
    const page = await historyWithinBytes(store, "g:1", { limit: 1_000 }, MIB);
    // 100,000 bytes each: ten fit in 1 MiB; the newest ten, oldest first.
    expect(seqs(page.messages)).toEqual(Array.from({ length: 10 }, (_, i) => 991 + i));
    expect(page.hasMore).toBe(true);
    expect(read.messages).toBeLessThanOrEqual(11); // 8, then the 3 the rest of the budget holds
    const fromStart = await historyWithinBytes(store, "g:1", { afterSeq: 10, limit: 1_000 }, MIB);
    expect(seqs(fromStart.messages)).toEqual(Array.from({ length: 10 }, (_, i) => 11 + i));
  });

  it("counts a body's UTF-8 bytes: 100,000 emoji are 400,000 bytes, two to a page of 1 MiB", async () => {
    const { store } = conversation(
      Array.from({ length: 10 }, () => 100_000),
      "😀",
    );
    const page = await historyWithinBytes(store, "g:1", { limit: 100 }, MIB);
    expect(seqs(page.messages)).toEqual([9, 10]);
    const mixed = conversation([300_000, 300_000, 300_000, 300_000], "é"); // 600,000 bytes each
    const got = await getManyWithinBytes(
      mixed.store,
      [1, 2, 3, 4].map((seq) => ({ conversationId: "g:1", seq })),
      { bytesMax: MIB.bytesMax, bodyCharsMax: 300_000 },
    );
    expect(seqs(got.messages)).toEqual([1]);
    expect(got.complete).toBe(false);
  });

  it("pages small bodies in a few reads (8, then what 17 MiB holds of the longest bodies, 44), up to the limit, and says when more remain", async () => {
    const { store, read } = conversation(Array.from({ length: 300 }, () => 100));
    const newest = await historyWithinBytes(store, "g:1", { limit: 100 }, MIB);
    expect(seqs(newest.messages)).toEqual(Array.from({ length: 100 }, (_, i) => 201 + i));
    expect(newest.hasMore).toBe(true);
    expect(read.calls).toBe(4); // 8 + 44 + 44 + 4
    const below = await historyWithinBytes(store, "g:1", { beforeSeq: 201, limit: 100 }, MIB);
    expect(seqs(below.messages)).toEqual(Array.from({ length: 100 }, (_, i) => 101 + i));
    const last = await historyWithinBytes(store, "g:1", { afterSeq: 250, limit: 100 }, MIB);
    expect(seqs(last.messages)).toEqual(Array.from({ length: 50 }, (_, i) => 251 + i));
    expect(last.hasMore).toBe(false);
    const all = await historyWithinBytes(store, "g:1", { limit: 1_000 }, MIB);
    expect(all.messages).toHaveLength(300);
    expect(all.hasMore).toBe(false);
  });

  it("returns one message even if it alone is over the budget, and mixes sizes in order", async () => {
    const { store } = conversation([10, 10, 500_000, 10, 10]);
    const page = await historyWithinBytes(
      store,
      "g:1",
      { limit: 10 },
      { bytesMax: 1_000, bodyCharsMax: 500_000 },
    );
    expect(seqs(page.messages)).toEqual([4, 5]); // the large one would pass the budget
    const large = await historyWithinBytes(
      store,
      "g:1",
      { beforeSeq: 4, limit: 10 },
      { bytesMax: 1_000, bodyCharsMax: 500_000 },
    );
    expect(seqs(large.messages)).toEqual([3]);
    expect(large.hasMore).toBe(true);
  });

  it("resolves inbox entries in their order within the budget, reading little of large bodies", async () => {
    const { store, read } = conversation(Array.from({ length: 1_000 }, () => 100_000));
    const keys = Array.from({ length: 1_000 }, (_, i) => ({ conversationId: "g:1", seq: i + 1 }));
    const got = await getManyWithinBytes(store, keys, MIB);
    expect(seqs(got.messages)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(got.complete).toBe(false);
    expect(read.messages).toBeLessThanOrEqual(11);
    const small = conversation(Array.from({ length: 200 }, () => 50));
    const all = await getManyWithinBytes(small.store, keys.slice(0, 200), MIB);
    expect(all.messages).toHaveLength(200);
    expect(all.complete).toBe(true);
    expect(small.read.calls).toBe(6); // 8 + 4 × 44 + 16
  });

  it("keeps small messages followed by large ones from loading hundreds of megabytes in one chunk", async () => {
    // The newest 8 messages are tiny, the 992 before them as long as allowed.
    const sizes = [...Array.from({ length: 992 }, () => 100_000), ...Array.from({ length: 8 }, () => 1)];
    const { store, read } = conversation(sizes);
    const page = await historyWithinBytes(store, "g:1", { limit: 1_000 }, MIB);
    // The 8 small ones and the 10 large ones that fit in 1 MiB with them.
    expect(seqs(page.messages)).toEqual(Array.from({ length: 18 }, (_, i) => 983 + i));
    expect(page.hasMore).toBe(true);
    // At most the budget and the overshoot allowed (16 MiB), not ~300 MB.
    expect(read.bytes).toBeLessThanOrEqual(MIB.bytesMax + 16 * 1024 * 1024 + 8 * 400_000);
    const keys = sizes.map((_, i) => ({ conversationId: "g:1", seq: sizes.length - i }));
    const inbox = conversation([...sizes]);
    const got = await getManyWithinBytes(inbox.store, keys, MIB);
    expect(got.complete).toBe(false);
    expect(inbox.read.bytes).toBeLessThanOrEqual(MIB.bytesMax + 16 * 1024 * 1024 + 8 * 400_000);
  });
});
