/** Presence: online on connect, offline only after the grace period, fanned out to subscribers only. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../helpers/grpc.js";
import { becomeContact, presenceOf } from "../helpers/presence.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

const GRACE_MS = 1_500;
let server: ServerProcess;
let n = 0;
const user = (name: string) => `${name}-${++n}`;

async function connect(name: string): Promise<RawClient> {
  return RawClient.connect(server.url, { token: await devToken(server.dataDir, name) });
}

async function contacts(): Promise<{ a: string; b: string; watcher: RawClient }> {
  const [a, b] = [user("a"), user("b")];
  const watcher = await connect(a);
  await becomeContact(watcher, b);
  return { a, b, watcher };
}

beforeAll(async () => {
  server = await startServer({
    env: {
      SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: String(GRACE_MS),
      SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS: "500",
    },
  });
});
afterAll(async () => {
  await server.dispose();
});

describe("presence", () => {
  it("goes online at once and offline only after the grace period", async () => {
    const { b, watcher } = await contacts();
    const snapshot = expectCase(
      await watcher.request({ case: "subscribePresence", value: { userIds: [b] } }),
      "presenceSnapshot",
    );
    expect(snapshot.statuses).toMatchObject([{ userId: b, online: false }]);
    const device = await connect(b);
    await watcher.nextEvent(presenceOf(b, true));
    // Heartbeats closer than half an interval to the previous one are not recorded: wait past that.
    await new Promise((r) => setTimeout(r, 400));
    const lastHeartbeat = Date.now();
    expectCase(await device.request({ case: "heartbeat", value: {} }), "heartbeat");
    device.close();
    await device.closed;
    const closedAt = Date.now();
    const offline = watcher.nextEvent(presenceOf(b, false), GRACE_MS + 3_000);
    const offlineAt = await offline.then(() => Date.now());
    expect(offlineAt - lastHeartbeat).toBeGreaterThanOrEqual(GRACE_MS - 50);
    expect(offlineAt - closedAt).toBeLessThan(GRACE_MS + 1_500);
    watcher.close();
  });

  it("does not flap when a device reconnects within the grace period", async () => {
    const { b, watcher } = await contacts();
    const first = await connect(b);
    expectCase(
      await watcher.request({ case: "subscribePresence", value: { userIds: [b] } }),
      "presenceSnapshot",
    );
    first.close();
    await first.closed;
    const second = await connect(b);
    // The new device heartbeats as clients do; the old session's disappearance must not show.
    const beat = setInterval(() => second.sendFrame({ kind: { case: "heartbeat", value: {} } }), 400);
    await new Promise((r) => setTimeout(r, GRACE_MS + 500));
    clearInterval(beat);
    expect(watcher.received.filter(presenceOf(b, false))).toHaveLength(0);
    second.close();
    await watcher.nextEvent(presenceOf(b, false), GRACE_MS + 3_000);
    watcher.close();
  });

  it("shows a user offline when their device stops heartbeating without closing", async () => {
    const { b, watcher } = await contacts();
    expectCase(
      await watcher.request({ case: "subscribePresence", value: { userIds: [b] } }),
      "presenceSnapshot",
    );
    const silent = await connect(b);
    await watcher.nextEvent(presenceOf(b, true));
    const since = Date.now();
    await watcher.nextEvent(presenceOf(b, false), GRACE_MS * 3);
    expect(Date.now() - since).toBeGreaterThanOrEqual(GRACE_MS - 100);
    silent.close();
    watcher.close();
  });

  it("answers a subscribe and the unsubscribe sent right after it in order, and watches nobody after", async () => {
    const { b, watcher } = await contacts();
    const order: string[] = [];
    const sub = watcher
      .request({ case: "subscribePresence", value: { userIds: [b] } })
      .then((f) => order.push(f.kind.case ?? ""));
    const unsub = watcher
      .request({ case: "unsubscribePresence", value: { userIds: [b] } })
      .then((f) => order.push(f.kind.case ?? ""));
    await Promise.all([sub, unsub]);
    expect(order).toEqual(["presenceSnapshot", "ok"]);
    const device = await connect(b);
    // b's online goes to b's own watchers only: a sentinel watcher shows when it has gone out.
    const { b: sentinelTarget, watcher: sentinel } = await contacts();
    expectCase(
      await sentinel.request({ case: "subscribePresence", value: { userIds: [sentinelTarget] } }),
      "presenceSnapshot",
    );
    const other = await connect(sentinelTarget);
    await sentinel.nextEvent(presenceOf(sentinelTarget, true));
    await new Promise((r) => setTimeout(r, 200));
    expect(watcher.received.filter((f) => f.kind.case === "presence")).toEqual([]);
    other.close();
    sentinel.close();
    device.close();
    watcher.close();
  });

  it("refuses to watch a stranger and sends changes only to subscribers", async () => {
    const { b, watcher } = await contacts();
    const stranger = await connect(user("stranger"));
    const err = expectCase(
      await stranger.request({ case: "subscribePresence", value: { userIds: [b] } }),
      "error",
    );
    expect(err.reason).toBe("NOT_A_CONTACT");
    expectCase(
      await watcher.request({ case: "subscribePresence", value: { userIds: [b] } }),
      "presenceSnapshot",
    );
    const device = await connect(b);
    await watcher.nextEvent(presenceOf(b, true));
    expect(stranger.received.some((f) => f.kind.case === "presence")).toBe(false);
    device.close();
    stranger.close();
    watcher.close();
  });
});

describe("role all with cluster.presenceTargets", () => {
  /** How a role-all process with gRPC off starts under `env`: "started", or the error it stopped with. */
  async function startWithoutGrpc(env: Record<string, string>): Promise<string> {
    const dir = tempDir("switchboard-nogrpc-");
    try {
      const started = await startServer({ dataDir: dir.path, env });
      await started.stop();
      return "started";
    } catch (err) {
      return (err as Error).message;
    } finally {
      dir.remove();
    }
  }

  it("refuses to start with gRPC off: no other process could reach its presence shard", async () => {
    expect(await startWithoutGrpc({ SWITCHBOARD_CLUSTER_PRESENCE_TARGETS: "127.0.0.1:50051" })).toMatch(
      /cluster\.presenceTargets is set but gRPC is off/,
    );
  });

  it("refuses to start with gRPC off and cluster.routerTarget set: the others could not relay through its router", async () => {
    expect(await startWithoutGrpc({ SWITCHBOARD_CLUSTER_ROUTER_TARGET: "ipv4:127.0.0.1:50051" })).toMatch(
      /cluster\.routerTarget is set but gRPC is off/,
    );
  });

  it("serves its presence shard before its gateway first renews its lease there", async () => {
    const grpcPort = await freePort();
    const single = await startServer({
      env: {
        SWITCHBOARD_GRPC_PORT: String(grpcPort),
        SWITCHBOARD_GRPC_ALLOW_UNAUTHENTICATED: "true",
        SWITCHBOARD_CLUSTER_PRESENCE_TARGETS: `127.0.0.1:${grpcPort}`,
        SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: String(GRACE_MS),
        SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS: "500",
      },
    });
    try {
      const [a, b] = [user("a"), user("b")];
      const watcher = await RawClient.connect(single.url, { token: await devToken(single.dataDir, a) });
      await becomeContact(watcher, b, { watch: true });
      const device = await RawClient.connect(single.url, { token: await devToken(single.dataDir, b) });
      await watcher.nextEvent(presenceOf(b, true), 10_000);
      device.close();
      watcher.close();
      // The first renewal (at start) reached the shard: nothing failed, nothing to subscribe again.
      expect(single.stderr()).not.toMatch(/renewing presence watches failed/);
    } finally {
      await single.dispose();
    }
  });
});
