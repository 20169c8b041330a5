/**
 * Backend services reach the platform over gRPC through the generic adapter: system messages,
 * groups, history, presence, push tokens, ids, and the gateway's Stats and Drain.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { Provider, PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { Code } from "../../internal/lib/errors.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { vapidKeys } from "../helpers/push-stand-ins/web-push.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess;

beforeAll(async () => {
  // --dev: the HTTP test below fetches a token from /v1/dev/token.
  server = await startServer({ args: ["--grpc-port", "0", "--dev"] });
});
afterAll(async () => {
  await server.dispose();
});

const grpcAddress = () => `127.0.0.1:${server.grpcPort}`;

describe("HTTP endpoints", () => {
  it("serves health, readiness, metrics, connect, the web client and loopback dev tokens", async () => {
    expect((await fetch(`${server.httpUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
    expect(metrics).toContain("switchboard_gateway_connections");
    expect(metrics).toContain("switchboard_messages_appended_total");
    const connect = (await (await fetch(`${server.httpUrl}/v1/connect`)).json()) as { url: string };
    expect(connect.url).toBe(`ws://127.0.0.1:${server.port}/ws`);
    expect(await (await fetch(`${server.httpUrl}/`)).text()).toContain("<title>Switchboard</title>");
    const { token } = (await (await fetch(`${server.httpUrl}/v1/dev/token?user=demo-user`)).json()) as {
      token: string;
    };
    const client = await RawClient.connect(server.url, { token });
    client.close();
    expect((await fetch(`${server.httpUrl}/v1/dev/token?user=system`)).status).toBe(400);
    expect((await fetch(`${server.httpUrl}/nope`)).status).toBe(404);
  });
});

describe("gRPC APIs", () => {
  it("lets a backend create a group and post a system message that members receive", async () => {
    const router = grpcClient(RouterService, grpcAddress());
    const member = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "grpc-member"),
    });
    await member.syncAll();
    const { conversation } = await router.createGroup({
      owner: "grpc-owner",
      name: "ops",
      members: ["grpc-member"],
    });
    expect(conversation?.memberCount).toBe(2);
    const sent = await router.sendMessage({
      conversationId: conversation!.id,
      clientMsgId: "sys-1",
      body: "maintenance at 5",
    });
    expect(sent.message?.sender).toBe("system");
    expect(sent.message?.seq).toBe(1n);
    const event = expectCase(await member.nextEvent((f) => f.kind.case === "message"), "message");
    expect(event.message?.body).toBe("maintenance at 5");
    const again = await router.sendMessage({
      conversationId: conversation!.id,
      clientMsgId: "sys-1",
      body: "maintenance at 5",
    });
    expect(again.duplicate).toBe(true);
    const history = await router.getHistory({ conversationId: conversation!.id, limit: 10 });
    expect(history.messages.map((m) => m.body)).toEqual(["maintenance at 5"]);
    expect((await router.listMembers({ conversationId: conversation!.id })).members).toEqual([
      "grpc-member",
      "grpc-owner",
    ]);
    const lookup = await router.lookupUser({ userId: "grpc-member" });
    expect(lookup.sessions).toHaveLength(1);
    await expect(
      router.sendMessage({ conversationId: "g:1", clientMsgId: "x", body: "x" }),
    ).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      reason: "CONVERSATION_NOT_FOUND",
    });
    member.close();
    router.close();
  });

  it("mints ids in batches and serves presence and push tokens", async () => {
    const ids = grpcClient(IdService, grpcAddress());
    const batch = await ids.allocateIds({ count: 500 });
    expect(new Set(batch.ids).size).toBe(500);
    const presence = grpcClient(PresenceService, grpcAddress());
    const status = await presence.getPresence({ userIds: ["nobody"] });
    expect(status.statuses[0]).toMatchObject({ userId: "nobody", online: false });
    const push = grpcClient(PushService, grpcAddress());
    await push.registerDevice({
      device: { userId: "u1", deviceId: "phone", provider: Provider.FCM, token: "tok" },
    });
    expect((await push.listDevices({ userId: "u1" })).devices.map((d) => d.deviceId)).toEqual(["phone"]);
    await expect(push.registerDevice({ device: { userId: "u1", deviceId: "x" } })).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
    });
    // At most 20 devices a user; a registration that replaces one does not count: the same device
    // id, or the token one of the user's devices held (an app reinstalled takes it over).
    const device = (deviceId: string, token = `tok-${deviceId}`) => ({
      device: { userId: "u2", deviceId, provider: Provider.FCM, token },
    });
    for (let i = 0; i < 20; i++) await push.registerDevice(device(`d${i}`));
    await expect(push.registerDevice(device("d20"))).rejects.toMatchObject({
      code: Code.RESOURCE_EXHAUSTED,
      reason: "TOO_MANY_DEVICES",
    });
    await push.registerDevice(device("d3", "tok-new"));
    await push.registerDevice(device("reinstalled", "tok-d7"));
    const held = (await push.listDevices({ userId: "u2" })).devices;
    expect(held).toHaveLength(20);
    expect(held.map((d) => d.deviceId)).toContain("reinstalled");
    expect(held.map((d) => d.deviceId)).not.toContain("d7");
    for (const c of [ids, presence, push]) c.close();
  });

  it("registers and removes the signed-in user's push tokens over the WebSocket", async () => {
    const subscription = JSON.stringify({
      endpoint: "https://push.example/x",
      keys: {
        p256dh: vapidKeys().publicKey, // a point on P-256, as a browser's key is
        auth: Buffer.alloc(16, 2).toString("base64url"),
      },
    });
    const client = await RawClient.connect(server.url, {
      token: await devToken(server.dataDir, "dev-owner"),
    });
    const push = grpcClient(PushService, grpcAddress());
    const ok = await client.request({
      case: "registerDevice",
      value: {
        deviceId: "laptop",
        provider: Provider.WEBPUSH,
        token: subscription,
      },
    });
    expect(ok.kind.case).toBe("ok");
    const listed = (await push.listDevices({ userId: "dev-owner" })).devices;
    expect(listed.map((d) => [d.deviceId, d.provider, d.token])).toEqual([
      ["laptop", Provider.WEBPUSH, subscription],
    ]);
    const bad = await client.request({
      case: "registerDevice",
      value: { deviceId: "x".repeat(129), provider: Provider.FCM, token: "t" },
    });
    expect(expectCase(bad, "error")).toMatchObject({ reason: "INVALID_DEVICE" });
    const noToken = await client.request({
      case: "registerDevice",
      value: { deviceId: "phone", provider: Provider.FCM, token: "" },
    });
    expect(expectCase(noToken, "error")).toMatchObject({ reason: "INVALID_TOKEN_LENGTH" });
    // A URL inside the network is refused at once (the push service would never call it).
    const inside = await client.request({
      case: "registerDevice",
      value: {
        deviceId: "crm",
        provider: Provider.WEBHOOK,
        token: "http://169.254.169.254/latest/meta-data",
      },
    });
    expect(expectCase(inside, "error")).toMatchObject({
      reason: "INVALID_DEVICE_TOKEN",
      message: expect.stringMatching(/169\.254\.169\.254 is not a public address/),
    });
    // A device id past its bound is refused before any store sees it (once, on the embedded backend,
    // its storage key was too long for LMDB inside a write transaction, which stopped the platform).
    const long = await client.request({ case: "unregisterDevice", value: { deviceId: "x".repeat(5_000) } });
    expect(expectCase(long, "error")).toMatchObject({ reason: "INVALID_DEVICE" });
    expect(
      (await client.request({ case: "unregisterDevice", value: { deviceId: "laptop" } })).kind.case,
    ).toBe("ok");
    expect((await push.listDevices({ userId: "dev-owner" })).devices).toEqual([]);
    push.close();
    client.close();
  });

  it("reports connection counts and drains clients with a reconnect frame and close 3001", async () => {
    const gateway = grpcClient(GatewayService, grpcAddress());
    const clients = await Promise.all(
      ["d1", "d2", "d3"].map(async (u) =>
        RawClient.connect(server.url, { token: await devToken(server.dataDir, u) }),
      ),
    );
    const stats = await gateway.stats({});
    expect(stats.connections).toBeGreaterThanOrEqual(3);
    expect(stats.draining).toBe(false);
    const drained = await gateway.drain({ windowMs: 300 });
    expect(drained.connections).toBeGreaterThanOrEqual(3);
    for (const c of clients) {
      const reconnect = expectCase(await c.nextEvent((f) => f.kind.case === "reconnect"), "reconnect");
      expect(reconnect.delayMsMax).toBe(300);
      expect(await c.closed).toBe(3001);
    }
    expect((await gateway.stats({})).draining).toBe(true);
    await expect(
      RawClient.connect(server.url, { token: await devToken(server.dataDir, "late") }),
    ).rejects.toThrow(/503/);
    gateway.close();
  });
});
