/** Backend contract, part: The per-user inbox and its cursors. */
import { describe, expect, it } from "vitest";
import type { InboxEntry } from "../../internal/backends/types.js";
import { type ContractKit, range, shuffled } from "./harness.js";

export function inboxContract({ setup, itUnless }: ContractKit): void {
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
      expect([await h.b.inbox.head(u), await h.b.inbox.head(v), await h.b.inbox.head(w)]).toEqual([6, 2, 1]);
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
}
