import { afterEach, describe, expect, it, vi } from "vitest";
import { CATCH_UP_CONCURRENCY, GAP_RETRY_DELAYS_MS, PullFollower } from "./pull-follower.js";
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
  version: 1,
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
  it("keeps a quiet pull conversation's position when busy push conversations pass its capacity", () => {
    const f = new PullFollower({
      fetch: async (conversationId) => ({ conversationId, messages: [], hasMore: false }),
      emit: () => undefined,
      capacity: 3,
    });
    f.learn([pullConversation("g:big", 7)]);
    for (const c of ["dm:a~me", "dm:b~me", "dm:c~me", "g:small"]) f.note(message(c, 1));
    const kept = f.positions();
    expect(kept["g:big"]).toBe(7);
    expect(Object.keys(kept)).toHaveLength(3);
  });

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

  it("keeps retrying a gap that keeps failing, with capped backoff, reporting each failure, until it is fetched", async () => {
    let failures = 6;
    const emitted: number[] = [];
    const failed: string[] = [];
    const f = new PullFollower({
      fetch: async (c, afterSeq) => {
        if (failures-- > 0) throw new Error("STORAGE_UNAVAILABLE");
        const seqs = [2, 3].filter((s) => s > afterSeq);
        return { conversationId: c, messages: seqs.map((s) => message(c, s)), hasMore: false };
      },
      emit: (m) => emitted.push(m.seq),
      capacity: 10,
      initial: { g: 1 },
      retryDelaysMs: [2, 4], // the last one repeats
      failed: (err, c) => failed.push(`${c}: ${String(err)}`),
    });
    await expect(f.live(message("g", 3))).rejects.toThrow("STORAGE_UNAVAILABLE");
    for (let i = 0; i < 200 && emitted.length < 2; i++) await new Promise((r) => setTimeout(r, 2));
    expect(emitted).toEqual([2, 3]); // not dropped after a few tries
    expect(failed).toHaveLength(5); // the first failure is live()'s rejection
    expect(failed[0]).toBe("g: Error: STORAGE_UNAVAILABLE");
    expect(GAP_RETRY_DELAYS_MS.at(-1)).toBe(30_000);
  });

  it("does not retry a fetch refused for good (the user left the group)", async () => {
    let fetches = 0;
    const f = new PullFollower({
      fetch: async () => {
        fetches++;
        throw new Error("NOT_MEMBER");
      },
      emit: () => {},
      capacity: 10,
      initial: { g: 1 },
      retryDelaysMs: [1],
      retryable: (err) => !String(err).includes("NOT_MEMBER"),
    });
    await expect(f.live(message("g", 3))).rejects.toThrow("NOT_MEMBER");
    await new Promise((r) => setTimeout(r, 20));
    expect(fetches).toBe(1);
  });

  it("catches up a few conversations at a time, and fetches those that failed again", async () => {
    let inFlight = 0;
    let most = 0;
    let failOnce = true;
    const emitted: string[] = [];
    const failed: string[] = [];
    const ids = Array.from({ length: 50 }, (_, i) => `g${i}`);
    const f = new PullFollower({
      fetch: async (c, afterSeq) => {
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise((r) => setTimeout(r, 1));
        inFlight--;
        if (c === "g7" && failOnce) {
          failOnce = false;
          throw new Error("TIMEOUT");
        }
        return { conversationId: c, messages: [message(c, afterSeq + 1)], hasMore: false };
      },
      emit: (m) => emitted.push(m.conversationId),
      capacity: 100,
      initial: Object.fromEntries(ids.map((id) => [id, 1])),
      retryDelaysMs: [5],
      failed: (_, c) => failed.push(c),
    });
    await f.catchUp(ids.map((id) => pullConversation(id, 2)));
    expect(most).toBe(CATCH_UP_CONCURRENCY);
    expect(failed).toEqual(["g7"]);
    expect(emitted).toHaveLength(49);
    for (let i = 0; i < 100 && emitted.length < 50; i++) await new Promise((r) => setTimeout(r, 2));
    expect(emitted.filter((c) => c === "g7")).toEqual(["g7"]);
    expect(f.positions().g7).toBe(2);
  });

  describe("with fake timers", () => {
    afterEach(() => {
      vi.useRealTimers();
    });

    it("stop() clears the timers of pending retries, so a Node process can exit", async () => {
      vi.useFakeTimers();
      const f = new PullFollower({
        fetch: async () => {
          throw new Error("STORAGE_UNAVAILABLE");
        },
        emit: () => {},
        capacity: 10,
        initial: { g: 1, h: 1 },
      });
      await expect(f.live(message("g", 3))).rejects.toThrow();
      await f.catchUp([pullConversation("h", 5)]);
      expect(vi.getTimerCount()).toBe(2);
      f.stop();
      expect(vi.getTimerCount()).toBe(0);
    });
  });
});
