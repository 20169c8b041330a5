/**
 * What a gateway tells the routers to relay, and what becomes of it when they cannot take it: a
 * stored receipt is answered ok and its event relayed once a router is back; a typing indicator
 * carries an expiry, past which a router that gets it late relays nothing. Both go to the router of
 * their conversation.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { RelayRequest } from "../../gen/switchboard/router/v1/router_pb.js";
import { FakeSocket } from "../../test/helpers/fake-socket.js";
import { loadConfig } from "../lib/config.js";
import { errors } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { Connection, type GatewayContext } from "./connection.js";
import { Gateway, type GatewayOptions } from "./gateway.js";

const until = async (pred: () => boolean, ms = 5_000) => {
  for (const end = Date.now() + ms; !pred() && Date.now() < end; ) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
};

const closing: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of closing.splice(0).reverse()) await close();
});

/** A gateway whose router fails every relay while `routers.down`, and records those it takes. */
async function gatewayWithRouters() {
  const routers = { down: false, relayed: [] as RelayRequest[], refused: 0, keys: [] as string[] };
  const metrics = createMetrics();
  const gateway = new Gateway({
    config: loadConfig({}),
    log: discardingLogger(),
    metrics,
    backends: {
      membership: { members: async () => ["alice", "bob"] },
      messages: { lastSeq: async () => 3 },
      receipts: { raise: async () => true },
      routing: { publish: async () => undefined },
      inbox: { head: async () => 0 },
    },
    conversations: {
      memberAccess: async (_user: string, id: string) => ({
        record: { id, delivery: "push" },
        role: "member",
      }),
    },
    relays: (conversationId: string) => ({
      relay: async (req: RelayRequest) => {
        routers.keys.push(conversationId);
        if (routers.down) {
          routers.refused++;
          throw errors.unavailable("UNAVAILABLE", "every router is restarting");
        }
        routers.relayed.push(req);
        return { sessions: 1 };
      },
    }),
    push: {},
    presence: { heartbeat: async () => ({}), keepWatches: async () => ({ lost: false }) },
    verify: async (token: string) => ({ userId: token, expiresAtMs: Number.POSITIVE_INFINITY }),
    gatewayId: "gw-1",
    gatewayEpoch: 1,
    advertiseAddress: "",
  } as unknown as GatewayOptions);
  closing.push(() => gateway.close());
  const socket = new FakeSocket();
  new Connection((gateway as unknown as { ctx: GatewayContext }).ctx, socket as never, "alice-1", "json");
  socket.frame({ id: 1, auth: { token: "alice" } });
  await until(() => socket.reply(1) !== undefined);
  return { routers, socket, metrics };
}

describe("gateway relays", () => {
  it("answers a stored receipt ok while no router takes its event, and relays the event once one does", async () => {
    const { routers, socket } = await gatewayWithRouters();
    routers.down = true;
    socket.frame({ id: 2, receipt: { conversationId: "dm:alice~bob", seq: "2", kind: "RECEIPT_KIND_READ" } });
    await until(() => socket.reply(2) !== undefined);
    expect(socket.reply(2)!.kind.case).toBe("ok");
    await until(() => routers.refused >= 1);
    routers.down = false;
    // Asked again after a second.
    await until(() => routers.relayed.length === 1, 3_000);
    const [relay] = routers.relayed;
    expect(relay!.userIds).toEqual(["alice", "bob"]);
    expect(relay!.excludeSessionId).toBe("alice-1");
    expect(relay!.frame?.kind.case).toBe("receipt");
    expect(relay!.frame?.kind.value).toMatchObject({
      conversationId: "dm:alice~bob",
      userId: "alice",
      seq: 2n,
    });
  });

  it("relays only the newest of a user's watermarks in a conversation when the routers come back", async () => {
    const { routers, socket } = await gatewayWithRouters();
    routers.down = true;
    for (const [id, seq] of [
      [2, "2"],
      [3, "3"],
    ] as const) {
      socket.frame({ id, receipt: { conversationId: "dm:alice~bob", seq, kind: "RECEIPT_KIND_READ" } });
      await until(() => socket.reply(id) !== undefined);
    }
    await until(() => routers.refused >= 2);
    routers.down = false;
    await until(() => routers.relayed.length >= 1, 3_000);
    await new Promise((r) => setTimeout(r, 1_200)); // past the older one's retry, had it been kept
    expect(
      routers.relayed.map((r) => (r.frame?.kind.case === "receipt" ? r.frame.kind.value.seq : 0n)),
    ).toEqual([3n]);
  });

  it("gives a typing indicator an expiry at its request's deadline", async () => {
    const { routers, socket } = await gatewayWithRouters();
    const before = Date.now();
    socket.frame({ id: 2, typing: { conversationId: "dm:alice~bob", typing: true } });
    await until(() => socket.reply(2) !== undefined);
    expect(socket.reply(2)!.kind.case).toBe("ok");
    expect(routers.keys).toEqual(["dm:alice~bob"]); // the conversation's router
    const expires = Number(routers.relayed[0]!.expiresAtMs);
    expect(expires).toBeGreaterThanOrEqual(before + 5_000);
    expect(expires).toBeLessThanOrEqual(Date.now() + 5_000);
  });
});
