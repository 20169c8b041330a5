/**
 * The router against stand-ins for its stores and one in-process gateway: what reaches the gateway
 * when the routing table learns of a session late or just after its user was handed a message, and
 * when a pull conversation's members cannot be read.
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { RelayRequestSchema } from "../../gen/switchboard/router/v1/router_pb.js";
import type {
  DeliveryHandler,
  InboxDelivery,
  MembershipStore,
  MessageLog,
  RoutingEvents,
  SessionEvent,
  StoredMessage,
} from "../backends/types.js";
import { Code } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import type { DeliverInit, GatewayClient } from "./gateway-link.js";
import { Router } from "./router.js";
import { routerServiceImpl } from "./service.js";

function setup(members: MembershipStore["members"]) {
  const received: DeliverInit[] = [];
  let onSession!: (e: SessionEvent) => void;
  let handler!: DeliveryHandler;
  const closeable = { close: async () => {} };
  const routing = {
    subscribe: async (h: (e: SessionEvent) => void) => {
      onSession = h;
      return closeable;
    },
  } as unknown as RoutingEvents;
  const log = {
    deliveries: async (h: DeliveryHandler) => {
      handler = h;
      return closeable;
    },
  } as unknown as MessageLog;
  const router = new Router({
    log,
    membership: { members } as unknown as MembershipStore,
    inbox: {} as never,
    routing,
    push: { notify: async () => ({}) } as never,
    dialGateway: () => {
      throw new Error("no gateway in another process here");
    },
    streamQueueBytesMax: 1 << 20,
    logger: discardingLogger(),
    metrics: createMetrics(),
  });
  const gateway: GatewayClient = {
    async *deliver(requests) {
      for await (const req of requests) received.push(req as DeliverInit);
      yield* [];
    },
    drain: async () => ({}) as never,
    stats: async () => ({}) as never,
  };
  router.attachGateway("g1", gateway);
  return { router, received, session: (e: SessionEvent) => onSession(e), deliver: () => handler };
}

const up = (userId: string, lateByMs?: number): SessionEvent => ({
  kind: "up",
  userId,
  sessionId: `s-${userId}`,
  gatewayId: "g1",
  gatewayEpoch: 1,
  ...(lateByMs === undefined ? {} : { lateByMs }),
});

const message = (conversationId: string, seq: number): StoredMessage => ({
  conversationId,
  seq,
  messageId: String(1000 + seq),
  sender: "carol",
  clientMsgId: `c-${seq}`,
  body: "hello",
  createdAtMs: Date.now(),
});

const until = async (pred: () => boolean) => {
  for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
};

describe("Router", () => {
  it("has the gateway re-check a user's inbox when the table learned of the session late, only then", async () => {
    const { router, received, session } = setup(async () => []);
    await router.start();
    session(up("prompt", 3));
    session(up("tardy", 2_000));
    session(up("replayed"));
    await until(() => received.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(received).toEqual([expect.objectContaining({ recheckInboxes: true, userIds: ["tardy"] })]);
    await router.close();
  });

  it("has the gateway re-check a session learned of promptly if its user was handed a message just now", async () => {
    const { router, received, session, deliver } = setup(async () => []);
    await router.start();
    // bob has no session here yet: the message goes to push, while bob's new device may be syncing.
    await deliver().deliver([
      { message: message("dm:bob~carol", 1), recipients: [{ userId: "bob", cursor: 1 }] },
    ]);
    session(up("bob")); // a replay (or an in-process table): no lateness, nothing to check
    session(up("bob", 3));
    session(up("dave", 3));
    await until(() => received.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(received).toEqual([expect.objectContaining({ recheckInboxes: true, userIds: ["bob"] })]);
    await router.close();
  });

  it("delivers a batch's other messages when a pull conversation's members cannot be read", async () => {
    const { router, received, session, deliver } = setup(async (conversationId) => {
      if (conversationId === "g:1") throw new Error("Cassandra timed out");
      return ["bob", "carol"];
    });
    await router.start();
    session(up("bob"));
    const batch: InboxDelivery[] = [
      { message: message("g:1", 5), recipients: [], pull: true },
      { message: message("g:2", 7), recipients: [], pull: true },
      { message: message("dm:bob~carol", 9), recipients: [{ userId: "bob", cursor: 42 }] },
    ];
    await deliver().deliver(batch);
    await until(() => received.length === 2);
    await new Promise((r) => setTimeout(r, 20));
    expect(received).toHaveLength(2);
    expect(received[0]).toMatchObject({ userIds: ["bob"], cursors: [] });
    expect(
      received[0]?.frame?.kind?.case === "message" && received[0].frame.kind.value.message?.conversationId,
    ).toBe("g:2");
    expect(received[1]).toMatchObject({ userIds: ["bob"], cursors: [42n] });
    await router.close();
  });
});

describe("RouterService.Relay", () => {
  it("relays nothing that reaches it after its expiry (its caller was already told it failed)", async () => {
    const { router, received, session } = setup(async () => []);
    await router.start();
    session(up("bob"));
    const metrics = (router as unknown as { options: { metrics: ReturnType<typeof createMetrics> } }).options
      .metrics;
    const service = routerServiceImpl(router, {} as never, {} as never, 100);
    const typing = (expiresAtMs: bigint) =>
      create(RelayRequestSchema, {
        userIds: ["bob"],
        frame: {
          kind: { case: "typing", value: { conversationId: "dm:alice~bob", userId: "alice", typing: true } },
        },
        expiresAtMs,
      });
    await expect(service.relay(typing(BigInt(Date.now() - 1)), {} as never)).rejects.toMatchObject({
      code: Code.DEADLINE_EXCEEDED,
    });
    expect(
      await metrics.registry.getSingleMetricAsString("switchboard_router_relays_expired_total"),
    ).toContain("switchboard_router_relays_expired_total 1");
    await service.relay(typing(BigInt(Date.now() + 5_000)), {} as never);
    await service.relay(typing(0n), {} as never); // no expiry
    await until(() => received.length === 2);
    await new Promise((r) => setTimeout(r, 20));
    expect(received).toHaveLength(2);
    await router.close();
  });
});

describe("Router and another process's gateway without an address", () => {
  it("says once that its sessions cannot be reached, and counts what it cannot deliver to them", async () => {
    const errors: Array<{ msg: string; fields: unknown }> = [];
    const logger = {
      ...discardingLogger(),
      error: (msg: string, fields?: unknown) => errors.push({ msg, fields }),
    };
    let onSession!: (e: SessionEvent) => void;
    const closeable = { close: async () => {} };
    const metrics = createMetrics();
    const router = new Router({
      log: { deliveries: async () => closeable } as unknown as MessageLog,
      membership: { members: async () => [] } as unknown as MembershipStore,
      inbox: {} as never,
      routing: {
        subscribe: async (h: (e: SessionEvent) => void) => {
          onSession = h;
          return closeable;
        },
      } as unknown as RoutingEvents,
      push: { notify: async () => ({}) } as never,
      dialGateway: () => {
        throw new Error("nothing to dial: no address");
      },
      streamQueueBytesMax: 1 << 20,
      logger: logger as never,
      metrics,
    });
    await router.start();
    // Two sessions of a gateway in another process of role all, started without gRPC.
    for (const user of ["ann", "ben"])
      onSession({ kind: "up", userId: user, sessionId: `s-${user}`, gatewayId: "other", gatewayEpoch: 1 });
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toMatch(/no gRPC address.*grpc\.port/);
    expect(errors[0]!.fields).toEqual({ gatewayId: "other" });
    router.relay(["ann"], [], "", {
      kind: { case: "typing", value: { conversationId: "dm:ann~ben", userId: "ben", typing: true } },
    });
    const dropped = (await metrics.deliveriesDroppedTotal.get()).values.find(
      (v) => v.labels.reason === "unreachable",
    );
    expect(dropped?.value).toBe(1);
    await router.close();
  });
});
