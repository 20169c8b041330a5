import { describe, expect, it } from "vitest";
import { PullFollower } from "./pull-follower.js";
import type { ChatMessage, Conversation, HistoryPage } from "./types.js";

const message = (conversationId: string, seq: number): ChatMessage => ({
  conversationId,
  seq,
  messageId: `${conversationId}/${seq}`,
  sender: "someone",
  clientMsgId: `c${seq}`,
  body: `m${seq}`,
  createdAtMs: seq,
});

const pullConversation = (id: string, lastSeq: number): Conversation => ({
  id,
  kind: "group",
  name: id,
  owner: "",
  memberCount: 500,
  open: true,
  lastSeq,
  createdAtMs: 0,
  readSeq: 0,
  postPolicy: "everyone",
  addPolicy: "everyone",
  delivery: "pull",
});

/** A follower over an in-memory log of conversations, fetching pages of `pageSize`. */
function follower(stored: Record<string, number>, pageSize = 2, initial?: Record<string, number>) {
  const emitted: Array<[string, number, string]> = [];
  const fetches: Array<[string, number]> = [];
  const f = new PullFollower({
    fetch: async (c, afterSeq): Promise<HistoryPage> => {
      fetches.push([c, afterSeq]);
      await new Promise((r) => setTimeout(r, 1));
      const last = stored[c] ?? 0;
      const seqs = Array.from(
        { length: Math.max(0, Math.min(pageSize, last - afterSeq)) },
        (_, i) => afterSeq + 1 + i,
      );
      return {
        conversationId: c,
        messages: seqs.map((s) => message(c, s)),
        hasMore: afterSeq + pageSize < last,
      };
    },
    emit: (m, source) => emitted.push([m.conversationId, m.seq, source]),
    capacity: 100,
    ...(initial ? { initial } : {}),
  });
  return { f, emitted, fetches };
}

describe("PullFollower", () => {
  it("emits live messages in seq order, once, fetching a gap before the message that reveals it", async () => {
    const { f, emitted, fetches } = follower({ g: 6 });
    f.note(message("g", 1)); // the last inbox message before the group switched to pull
    await Promise.all([
      f.live(message("g", 2)),
      f.live(message("g", 5)),
      f.live(message("g", 5)),
      f.live(message("g", 6)),
    ]);
    expect(emitted).toEqual([
      ["g", 2, "live"],
      ["g", 3, "sync"],
      ["g", 4, "sync"],
      ["g", 5, "live"],
      ["g", 6, "live"],
    ]);
    expect(fetches).toEqual([["g", 2]]);
    expect(f.positions()).toEqual({ g: 6 });
  });

  it("after a sync fetches what followed pull conversations hold past their positions, page by page", async () => {
    const { f, emitted, fetches } = follower({ a: 5, b: 3, fresh: 1_000 }, 2, { a: 1 });
    f.note(message("b", 3));
    expect(f.following).toBe(true);
    await f.catchUp([pullConversation("a", 5), pullConversation("b", 3), pullConversation("fresh", 1_000)]);
    expect(emitted).toEqual([
      ["a", 2, "sync"],
      ["a", 3, "sync"],
      ["a", 4, "sync"],
      ["a", 5, "sync"],
    ]);
    // b is up to date; a conversation never seen is not fetched (the app pages it on open).
    expect(fetches).toEqual([
      ["a", 1],
      ["a", 3],
    ]);
    expect(f.positions()).toEqual({ a: 5, b: 3, fresh: 1_000 });
    await f.live(message("fresh", 1_001));
    expect(emitted.at(-1)).toEqual(["fresh", 1_001, "live"]);
  });

  it("keeps a position where a fetch failed, so the next catch-up fetches it again", async () => {
    let fail = true;
    const emitted: number[] = [];
    const f = new PullFollower({
      fetch: async (c, afterSeq) => {
        if (fail) throw new Error("connection lost");
        return { conversationId: c, messages: [message(c, afterSeq + 1)], hasMore: false };
      },
      emit: (m) => emitted.push(m.seq),
      capacity: 10,
      initial: { g: 1 },
      retryDelaysMs: [], // no retry of its own: the catch-up below
    });
    await expect(f.live(message("g", 3))).rejects.toThrow("connection lost");
    expect(f.positions()).toEqual({ g: 1 });
    fail = false;
    await f.catchUp([pullConversation("g", 2)]);
    expect(emitted).toEqual([2]);
    expect(f.positions()).toEqual({ g: 2 });
  });

  it("fetches a gap that failed again after a delay, with the live message that revealed it, in order", async () => {
    let failures = 2;
    let active = true;
    const emitted: Array<[number, string]> = [];
    const f = new PullFollower({
      fetch: async (c, afterSeq) => {
        if (failures-- > 0) throw new Error("STORAGE_UNAVAILABLE");
        const seqs = [2, 3].filter((s) => s > afterSeq);
        return { conversationId: c, messages: seqs.map((s) => message(c, s)), hasMore: false };
      },
      emit: (m, source) => emitted.push([m.seq, source]),
      capacity: 10,
      initial: { g: 1 },
      active: () => active,
      retryDelaysMs: [5, 5, 5],
    });
    await expect(f.live(message("g", 3))).rejects.toThrow("STORAGE_UNAVAILABLE");
    expect(emitted).toEqual([]);
    for (let i = 0; i < 100 && emitted.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    expect(emitted).toEqual([
      [2, "sync"],
      [3, "sync"],
    ]); // the first retry failed too; the second fetched both
    expect(f.positions()).toEqual({ g: 3 });

    // A closed client retries nothing.
    failures = 1;
    active = false;
    await expect(f.live(message("g", 5))).rejects.toThrow("STORAGE_UNAVAILABLE");
    await new Promise((r) => setTimeout(r, 30));
    expect(emitted).toHaveLength(2);
  });
});
