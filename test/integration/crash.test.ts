/**
 * Crash safety of the embedded platform: kill -9 right after acks (with more sends in flight),
 * restart on the same data dir, and every acknowledged message is there exactly once, in order,
 * with gap-free seqs; resending the unacknowledged ones with their client_msg_id converges.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess;

beforeAll(async () => {
  server = await startServer({
    env: {
      SWITCHBOARD_GATEWAY_SENDS_PER_SECOND: "10000",
      SWITCHBOARD_GATEWAY_SEND_BURST: "10000",
      SWITCHBOARD_GATEWAY_USER_SENDS_PER_SECOND: "10000",
    },
  });
});
afterAll(async () => {
  await server.dispose();
});

describe("kill -9", () => {
  it("loses no acknowledged message and invents none", async () => {
    const alice = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "alice") });
    const group = expectCase(
      await alice.request({ case: "createGroup", value: { name: "crash", members: ["bob", "carol"] } }),
      "conversation",
    ).conversation!.id;
    const targets = [
      { case: "toUser" as const, value: "bob" },
      { case: "conversationId" as const, value: group },
    ];
    const acked = new Map<string, { seq: bigint; messageId: string; conversationId: string }>();
    const TOTAL = 600;
    const ACKED_BEFORE_KILL = 300;
    let killed = false;
    const sends = Array.from({ length: TOTAL }, (_, i) => {
      const clientMsgId = `m${i}`;
      return alice
        .request({ case: "send", value: { target: targets[i % 2]!, clientMsgId, body: `body ${i}` } }, 5_000)
        .then((f) => {
          if (f.kind.case === "ack")
            acked.set(clientMsgId, {
              seq: f.kind.value.seq,
              messageId: f.kind.value.messageId,
              conversationId: f.kind.value.conversationId,
            });
          if (!killed && acked.size >= ACKED_BEFORE_KILL) {
            killed = true;
            return server.kill();
          }
        })
        .catch(() => undefined); // replies lost with the process
    });
    await Promise.all(sends);
    expect(killed).toBe(true);
    const ackedAtKill = new Map(acked);
    expect(ackedAtKill.size).toBeGreaterThanOrEqual(ACKED_BEFORE_KILL);

    server = await server.restart();
    const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "bob") });
    const aliceAgain = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "alice"),
    });
    const synced = await aliceAgain.syncAll();
    const byClientId = new Map<string, number>();
    for (const m of synced.messages) {
      const body = Number(m.body.split(" ")[1]);
      byClientId.set(`m${body}`, (byClientId.get(`m${body}`) ?? 0) + 1);
    }
    // Every ack survived, exactly once, with the acked seq and id.
    for (const [clientMsgId, ack] of ackedAtKill) {
      expect(byClientId.get(clientMsgId)).toBe(1);
      const stored = synced.messages.find((m) => m.messageId === ack.messageId);
      expect(stored?.seq).toBe(ack.seq);
    }
    // Nothing invented: everything stored was sent; per conversation seqs are exactly 1..n in order.
    for (const key of byClientId.keys()) expect(Number(key.slice(1))).toBeLessThan(TOTAL);
    for (const conversationId of new Set(synced.messages.map((m) => m.conversationId))) {
      const seqs = synced.messages
        .filter((m) => m.conversationId === conversationId)
        .map((m) => Number(m.seq));
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    }
    // Resending everything with the same client_msg_id converges on exactly TOTAL messages.
    for (let i = 0; i < TOTAL; i++) {
      const f = await aliceAgain.request({
        case: "send",
        value: { target: targets[i % 2]!, clientMsgId: `m${i}`, body: `body ${i}` },
      });
      const ack = expectCase(f, "ack");
      if (ackedAtKill.has(`m${i}`)) {
        expect(ack.duplicate).toBe(true);
        expect(ack.messageId).toBe(ackedAtKill.get(`m${i}`)!.messageId);
      }
    }
    const bobView = await bob.syncAll();
    expect(bobView.messages).toHaveLength(TOTAL);
    expect(new Set(bobView.messages.map((m) => m.messageId)).size).toBe(TOTAL);
    alice.close();
    aliceAgain.close();
    bob.close();
  }, 60_000);
});
