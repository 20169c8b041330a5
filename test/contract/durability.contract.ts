/** Backend contract, part: What survives a close and reopen of the same data. */
import { describe, expect, it } from "vitest";
import type { DeviceRecord } from "../../internal/backends/types.js";
import { type ContractKit, draft, nextMessageId, range, seqs } from "./harness.js";

export function durabilityContract({ setup, readLog }: ContractKit): void {
  // -------------------------------------------------------------------------------------------
  describe("durability across close and reopen", () => {
    it("acked messages, seq counters and the dedupe table survive", async (ctx) => {
      const h = await setup(ctx);
      if (!h.durable) ctx.skip();
      const conversations = [h.id("a"), h.id("b"), h.id("c")];
      const drafts = range(0, 29).map((i) => draft(conversations[i % 3]!, "s", `m${i}`));
      const acks = await Promise.all(drafts.map((d) => h.b.log.append(d)));
      await h.reopen();

      // Re-sending after a restart is still recognised: dedupe is durable, not an in-memory window.
      for (const [i, d] of drafts.entries()) {
        expect(await h.b.log.appended(d.conversationId, d.sender, d.clientMsgId)).toEqual(acks[i]!.message);
        const again = await h.b.log.append({ ...d, messageId: nextMessageId(), body: "retry" });
        expect(again).toEqual({ duplicate: true, message: acks[i]!.message });
      }
      for (const conversationId of conversations) {
        const next = await h.b.log.append(draft(conversationId, "s", "after-reopen"));
        expect(next.message.seq).toBe(11);
        const log = await readLog(h, conversationId);
        expect(log).toEqual([
          ...acks.filter((r) => r.message.conversationId === conversationId).map((r) => r.message),
          next.message,
        ]);
        expect(seqs(log)).toEqual(range(1, 11));
      }
    });

    it("a first attempt received before a restart is still checked against what was stored before it", async (ctx) => {
      const h = await setup(ctx);
      if (!h.durable) ctx.skip();
      const conversationId = h.id("dm");
      const original = await h.b.log.append(draft(conversationId, "s", "k1"));
      // A first attempt whose resends may have come before the restart (its frame trailed them).
      const resendsAfterMs = Date.now();
      await h.reopen();
      const late = await h.b.log.append(draft(conversationId, "s", "k1", "late"), {
        firstAttemptResendsAfterMs: resendsAfterMs,
      });
      expect(late).toEqual({ duplicate: true, message: original.message });
      const next = await h.b.log.append(draft(conversationId, "s", "k2"), {
        firstAttemptResendsAfterMs: Date.now(),
      });
      expect(next.message.seq).toBe(2);
      expect(await readLog(h, conversationId)).toEqual([original.message, next.message]);
    });

    it("appends acked while close() runs are durable and the log stays gap-free", async (ctx) => {
      const h = await setup(ctx);
      if (!h.durable) ctx.skip();
      const conversationId = h.id("c");
      const pending = range(1, 100).map((i) => h.b.log.append(draft(conversationId, "s", `m${i}`)));
      const reopened = h.reopen(); // closes while the appends are in flight
      const settled = await Promise.allSettled(pending);
      await reopened;
      const acked = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value.message] : []));

      const log = await readLog(h, conversationId);
      expect(seqs(log)).toEqual(range(1, log.length));
      const bySeq = new Map(log.map((m) => [m.seq, m]));
      for (const m of acked) expect(bySeq.get(m.seq)).toEqual(m);
      const next = await h.b.log.append(draft(conversationId, "s", "next"));
      expect(next.message.seq).toBe(log.length + 2); // after the log and readLog's sentinel
    });

    it("consumer group offsets survive", async (ctx) => {
      const h = await setup(ctx);
      if (!h.durable) ctx.skip();
      const conversationId = h.id("c");
      const first = await Promise.all(
        range(1, 20).map((i) => h.b.log.append(draft(conversationId, "s", `a${i}`))),
      );
      const a = await h.consume("g");
      await h.eventually(() => expect(a.missing(first.map((r) => r.message.messageId))).toEqual([]));
      await a.stop();
      await h.reopen();

      const second = await Promise.all(
        range(1, 5).map((i) => h.b.log.append(draft(conversationId, "s", `b${i}`))),
      );
      const b = await h.consume("g");
      await h.eventually(() => expect(b.missing(second.map((r) => r.message.messageId))).toEqual([]));
      expect(seqs(b.conversation(conversationId))).toEqual(range(21, 25));
      expect(b.violations).toEqual([]);
    });

    it("inbox cursors, receipts, membership, presence and devices survive", async (ctx) => {
      const h = await setup(ctx);
      if (!h.durable) ctx.skip();
      const [user, conversationId] = [h.id("u"), h.id("conv")];
      const entries = range(1, 5).map((seq) => ({
        userId: user,
        conversationId,
        seq,
        messageId: `m${seq}`,
      }));
      const appended = await h.b.inbox.append(entries);
      expect(await h.b.receipts.raise(conversationId, user, "read", 4)).toBe(true);
      const created = await h.b.membership.createConversation(
        { id: conversationId, kind: "group", name: "team", owner: user, open: true, createdAtMs: 1000 },
        [user, h.id("v")],
      );
      await h.b.presence.setLastActive(user, 123_456);
      const device: DeviceRecord = {
        userId: user,
        deviceId: "phone",
        provider: "fcm",
        token: "tok",
        registeredAtMs: 42,
      };
      await h.b.devices.put(device);
      await h.reopen();

      expect(await h.b.inbox.head(user)).toBe(5);
      expect(await h.b.inbox.read(user, 0, 100)).toEqual(appended);
      const more = await h.b.inbox.append([
        entries[2]!,
        { userId: user, conversationId, seq: 6, messageId: "m6" },
      ]);
      expect(more.map((e) => e.cursor)).toEqual([3, 6]);
      expect(await h.b.receipts.get(conversationId, user, "read")).toBe(4);
      expect(await h.b.receipts.raise(conversationId, user, "read", 4)).toBe(false);
      expect(await h.b.membership.getConversation(conversationId)).toEqual(created.record);
      expect(await h.b.membership.isMember(conversationId, h.id("v"))).toBe(true);
      expect(await h.b.presence.lastActive([user])).toEqual(new Map([[user, 123_456]]));
      expect(await h.b.devices.list(user)).toEqual([device]);
    });
  });
}
