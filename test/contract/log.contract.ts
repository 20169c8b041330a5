/** Backend contract, part: The message log: per-conversation seq, idempotent re-delivery, consumer groups. */
import { describe, expect, it } from "vitest";
import type { StoredMessage } from "../../internal/backends/types.js";
import { Collector, type ContractKit, draft, range, seqs, shuffled } from "./harness.js";

export function logContract({ setup, readLog }: ContractKit): void {
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

    it("a send its client calls a first attempt is appended once; a resend of it, or a copy, returns the original", async (ctx) => {
      const h = await setup(ctx);
      const conversationId = h.id("dm");
      // The claim behind the first append is the log's to make: give it one before the hinted sends.
      const before = await h.b.log.append(draft(conversationId, "alice", "before"));
      const first = (d = draft(conversationId, "alice", "a1", "hello")) =>
        h.b.log.append(d, { firstAttemptResendsAfterMs: Date.now() });
      const original = await first();
      expect(original).toEqual({ duplicate: false, message: expect.objectContaining({ seq: 2 }) });
      // The client's resend after a lost ack carries no hint; a copy of the first draft (produced
      // twice) carries the same one. Both are answered with the original.
      const resend = await h.b.log.append(draft(conversationId, "alice", "a1", "hello (resend)"));
      const copy = await first(draft(conversationId, "alice", "a1", "hello (copy)"));
      expect(resend).toEqual({ duplicate: true, message: original.message });
      expect(copy).toEqual({ duplicate: true, message: original.message });
      const next = await first(draft(conversationId, "alice", "a2", "there"));
      expect(next).toEqual({ duplicate: false, message: expect.objectContaining({ seq: 3 }) });
      expect(await readLog(h, conversationId)).toEqual([before.message, original.message, next.message]);
    });

    it("appended finds what append stored under (conversation, sender, clientMsgId), and appends nothing", async (ctx) => {
      const h = await setup(ctx);
      const [c1, c2] = [h.id("g1"), h.id("g2")];
      expect(await h.b.log.appended(c1, "alice", "a1")).toBeUndefined();
      const first = await h.b.log.append(draft(c1, "alice", "a1", "hello"));
      // A first attempt (the distributed sequencer may skip its lookup) is found as well.
      const hinted = await h.b.log.append(draft(c1, "alice", "a2", "there"), {
        firstAttemptResendsAfterMs: Date.now(),
      });
      expect([first.message.seq, hinted.message.seq]).toEqual([1, 2]);
      expect(await h.b.log.appended(c1, "alice", "a1")).toEqual(first.message);
      expect(await h.b.log.appended(c1, "alice", "a2")).toEqual(hinted.message);
      // Only the key's own: another sender's, another conversation's and another key's are not.
      const misses = await Promise.all([
        h.b.log.appended(c1, "bob", "a1"),
        h.b.log.appended(c2, "alice", "a1"),
        h.b.log.appended(c1, "alice", "a3"),
        h.b.log.appended(c1, "alice", "a"),
      ]);
      expect(misses).toEqual([undefined, undefined, undefined, undefined]);
      // A resend is still answered by append, and a lookup took no seq.
      const again = await h.b.log.append(draft(c1, "alice", "a1", "hello (retry)"));
      expect(again).toEqual({ duplicate: true, message: first.message });
      const third = await h.b.log.append(draft(c1, "alice", "a3"));
      expect(third.message.seq).toBe(3);
      expect(await h.b.log.appended(c1, "alice", "a3")).toEqual(third.message);
      expect(await readLog(h, c1)).toEqual([first.message, hinted.message, third.message]);
    });

    it("appended finds an append that was in flight when it was asked, once it is durable", async (ctx) => {
      const h = await setup(ctx);
      const conversationId = h.id("dm");
      const appending = h.b.log.append(draft(conversationId, "alice", "k"));
      const found = h.b.log.appended(conversationId, "alice", "k");
      const original = await appending;
      // Asked while the append was on its way: the message, or nothing yet (never another one).
      expect([undefined, original.message]).toContainEqual(await found);
      expect(await h.b.log.appended(conversationId, "alice", "k")).toEqual(original.message);
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

    it("a handler slower than the group's session timeout keeps its batch: handed out once", async (ctx) => {
      const h = await setup(ctx);
      const conversationId = h.id("slow");
      const appended = await Promise.all(
        range(1, 3).map((i) => h.b.log.append(draft(conversationId, "s", `s${i}`))),
      );
      const slow = new Collector(h.id(""));
      let first = true;
      slow.takes = () => {
        if (!first) return 0;
        first = false;
        return 12_000; // past Kafka's 10 s session timeout (consumers.ts)
      };
      const c = await h.consume("slow", slow);
      const ids = appended.map((r) => r.message.messageId);
      for (let waited = 0; c.missing(ids).length > 0 && waited < 30_000; waited += 200)
        await new Promise((r) => setTimeout(r, 200));
      expect(c.missing(ids)).toEqual([]);
      await new Promise((r) => setTimeout(r, 3_000)); // a re-delivery would come now
      expect(c.violations).toEqual([]);
      expect(c.attempts.flatMap((a) => a.messages.map((m) => m.seq))).toEqual([1, 2, 3]);
    }, 60_000);

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
}
