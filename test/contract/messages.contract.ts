/** Backend contract, part: The message store: history paging across buckets, getMany, idempotent writes. */
import { describe, expect, it } from "vitest";
import type { StoredMessage } from "../../internal/backends/types.js";
import { type ContractKit, type Harness, range, seqs, shuffled } from "./harness.js";

export function messageStoreContract({ setup }: ContractKit): void {
  // -------------------------------------------------------------------------------------------
  describe("message store", () => {
    const TOTAL = 2_500;
    const stored = (conversationId: string, seq: number): StoredMessage => ({
      conversationId,
      seq,
      messageId: String(10_000_000_000n + BigInt(seq)),
      sender: seq % 2 === 0 ? "alice" : "bob",
      clientMsgId: `c${seq}`,
      body: `message ${seq} ${"é".repeat(seq % 7)}`, // multi-byte text on every page
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
}
