/**
 * A gateway's presence watches against presence shards that restart, fail and lose leases: stand-in
 * sockets, real presence services behind in-process clients whose shards the test restarts or takes
 * down, and a router that hands each relay straight to the gateway.
 */
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { type ServerFrame, ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { FakeSocket } from "../../test/helpers/fake-socket.js";
import type { PresenceStore } from "../backends/types.js";
import { loadConfig } from "../lib/config.js";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { inProcessClient, type ServiceClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { presenceShardOf, shardedPresenceClient } from "../presence/shards.js";
import { Connection, type GatewayContext } from "./connection.js";
import { Gateway, type GatewayOptions } from "./gateway.js";

type PresenceClient = ServiceClient<typeof PresenceService>;

const until = async (pred: () => boolean, ms = 2_000) => {
  for (const end = Date.now() + ms; !pred() && Date.now() < end; ) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** last_active_at kept in memory, across the presence processes of a test. */
function memoryStore(): PresenceStore {
  const saved = new Map<string, number>();
  return {
    setLastActive: async (userId, atMs) => void saved.set(userId, atMs),
    lastActive: async (userIds) =>
      new Map(userIds.flatMap((u) => (saved.has(u) ? [[u, saved.get(u)!] as const] : []))),
    close: async () => undefined,
  };
}

const closing: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of closing.splice(0).reverse()) await close();
});

/**
 * `count` presence shards (processes the test can restart) behind a sharded client, each shard
 * unreachable while `down[i]`, with `calls` counting each shard's calls by method.
 */
function presenceShards(count: number, offlineAfterMs: number, relay: (req: unknown) => void) {
  const store = memoryStore();
  const router = {
    relay: async (req: unknown) => {
      relay(req);
      return { sessions: 0 };
    },
  } as unknown as ServiceClient<typeof RouterService>;
  const start = () => new Presence({ offlineAfterMs, store, router: () => router, log: discardingLogger() });
  const procs = Array.from({ length: count }, start);
  closing.push(async () => {
    for (const p of procs) await p.close();
  });
  const down = procs.map(() => false);
  const failNext = procs.map(() => new Set<string>());
  const calls = procs.map(() => new Map<string, number>());
  const inFlight = procs.map(() => ({ now: 0, most: 0 }));
  /** What a call waits for before shard i takes it (a slow or hung call), if anything. */
  const hold: Array<((method: keyof PresenceClient, req: unknown) => Promise<void> | undefined) | undefined> =
    procs.map(() => undefined);
  const clients = procs.map((_, i) => {
    const call =
      (method: keyof PresenceClient) =>
      async (req: never): Promise<never> => {
        calls[i]!.set(method, (calls[i]!.get(method) ?? 0) + 1);
        const proc = procs[i]!; // the process the call is on its way to, even if it restarts
        await hold[i]?.(method, req);
        if (down[i] || failNext[i]!.delete(method))
          throw errors.unavailable("UNAVAILABLE", `presence shard ${i} is unreachable`);
        const f = inFlight[i]!;
        f.most = Math.max(f.most, ++f.now);
        try {
          await sleep(1);
          const impl = inProcessClient(PresenceService, presenceServiceImpl(proc, store));
          return (await (impl[method] as unknown as (r: never) => Promise<never>)(req)) as never;
        } finally {
          f.now--;
        }
      };
    return {
      heartbeat: call("heartbeat"),
      endSession: call("endSession"),
      getPresence: call("getPresence"),
      subscribe: call("subscribe"),
      unsubscribe: call("unsubscribe"),
      keepWatches: call("keepWatches"),
    } as unknown as PresenceClient;
  });
  return {
    procs,
    down,
    failNext,
    hold,
    calls,
    inFlight,
    client: count === 1 ? clients[0]! : shardedPresenceClient(clients),
    /** Replaces shard i's process with a fresh one (its state gone), after the old one closed. */
    async restart(i: number) {
      await procs[i]!.close();
      procs[i] = start();
    },
  };
}

/** A gateway on `presence`, its sessions authenticated with their user id as token. */
async function gatewayOn(presence: PresenceClient) {
  const metrics = createMetrics();
  const gateway = new Gateway({
    config: loadConfig({}),
    log: discardingLogger(),
    metrics,
    backends: {
      membership: {
        isMember: async () => true, // everyone shares a direct conversation
        membersAmong: async () => new Set(),
        conversationsOf: async () => [],
      },
      routing: { publish: async () => undefined },
      inbox: { head: async () => 0 },
    },
    conversations: {},
    relays: () => ({}),
    push: {},
    presence,
    verify: async (token: string) => ({ userId: token, expiresAtMs: Number.POSITIVE_INFINITY }),
    gatewayId: "gw-1",
    gatewayEpoch: 1,
    advertiseAddress: "",
  } as unknown as GatewayOptions);
  closing.push(() => gateway.close());
  await gateway.announce();
  const g = gateway as unknown as {
    ctx: GatewayContext;
    dispatch(
      userIds: string[],
      cursors: bigint[],
      sessionIds: string[],
      exclude: string,
      frame: ServerFrame,
    ): number;
  };
  let sessions = 0;
  return {
    gateway,
    metrics,
    /** What a router does with a relay: the gateway's Deliver loop dispatches it. */
    deliver(req: unknown) {
      const r = req as { sessionIds?: string[]; frame?: unknown };
      g.dispatch([], [], r.sessionIds ?? [], "", create(ServerFrameSchema, r.frame as never));
    },
    async connect(userId: string) {
      const socket = new FakeSocket();
      const conn = new Connection(g.ctx, socket as never, `${userId}-session-${++sessions}`, "json");
      socket.frame({ id: 1, auth: { token: userId } });
      await until(() => socket.sent.some((f) => f.kind.case === "welcome"));
      return { conn, socket };
    },
  };
}

async function subscribe(socket: FakeSocket, userIds: string[]) {
  const id = 100 + socket.sent.length;
  socket.frame({ id, subscribePresence: { userIds } });
  await until(() => socket.sent.some((f) => f.replyTo === id));
  expect(socket.sent.find((f) => f.replyTo === id)!.kind.case).toBe("presenceSnapshot");
}

/** One presence shard, a gateway on it, and alice's connection watching bob. */
async function aliceWatchingBob() {
  let gw!: Awaited<ReturnType<typeof gatewayOn>>;
  const shards = presenceShards(1, 60_000, (req) => gw.deliver(req));
  gw = await gatewayOn(shards.client);
  const alice = await gw.connect("alice");
  await subscribe(alice.socket, ["bob"]);
  return { gw, shards, alice };
}

/** A user id on shard `shard` of `count`. */
function userOn(shard: number, count: number, name: string): string {
  for (let i = 0; ; i++) if (presenceShardOf(`${name}${i}`, count) === shard) return `${name}${i}`;
}

describe("gateway presence watches", () => {
  it("subscribes again on a shard that lost its watches though another shard's renewal failed", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    const shards = presenceShards(2, 60_000, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const bob = userOn(0, 2, "bob");
    const alice = await gw.connect("alice");
    await subscribe(alice.socket, [bob]);
    await shards.restart(0); // shard 0 restarts: alice's watch of bob is gone there...
    shards.down[1] = true; // ...and shard 1 is unreachable during the next renewal
    await gw.gateway.renewWatches();
    shards.down[1] = false;
    await gw.gateway.renewWatches();
    expect(shards.procs[0]!.watchCounts().sessions).toBe(1);
    await shards.client.heartbeat({ userId: bob, sessionId: "bob-1" });
    await until(() => alice.socket.presence().includes(`${bob}:online`));
  });

  it("subscribes again a shard whose renewal failed after it answered (its one 'lost' may be gone)", async () => {
    const { gw, shards } = await aliceWatchingBob();
    await shards.restart(0);
    // The shard answers "lost", and the answer is lost on its way back.
    const keep = shards.procs[0]!.keepWatches.bind(shards.procs[0]!);
    shards.procs[0]!.keepWatches = (id: string) => {
      keep(id);
      throw errors.unavailable("UNAVAILABLE", "connection reset");
    };
    await gw.gateway.renewWatches();
    shards.procs[0]!.keepWatches = keep;
    await gw.gateway.renewWatches();
    expect(shards.procs[0]!.watchCounts().sessions).toBe(1);
    expect(
      await gw.metrics.registry.getSingleMetricAsString("switchboard_presence_watches_lost_total"),
    ).toContain('reason="unanswered"} 1');
  });

  it("tells a session of a change it missed while its watches were lost", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    // A lease of 200 ms that this test lets lapse (the gateway's own timer renews every 10 s).
    const shards = presenceShards(1, 200, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const alice = await gw.connect("alice");
    await subscribe(alice.socket, ["bob", "carol"]);
    await shards.client.heartbeat({ userId: "bob", sessionId: "bob-1" });
    await shards.client.heartbeat({ userId: "carol", sessionId: "carol-1" });
    await until(() => alice.socket.presence().length === 2);
    // Unrenewed, presence drops alice's watches; then bob goes offline, told to nobody.
    const beat = (user: string) =>
      setInterval(() => void shards.client.heartbeat({ userId: user, sessionId: `${user}-1` }), 50);
    const beats = [beat("bob"), beat("carol")];
    await until(() => shards.procs[0]!.watchCounts().sessions === 0);
    clearInterval(beats[0]);
    await shards.client.endSession({ userId: "bob", sessionId: "bob-1" });
    await until(() => !shards.procs[0]!.status("bob").online);
    await gw.gateway.renewWatches();
    clearInterval(beats[1]);
    // The new snapshot tells what changed, and only that.
    expect(alice.socket.presence()).toEqual(["bob:online", "carol:online", "bob:offline"]);
    expect(
      await gw.metrics.registry.getSingleMetricAsString("switchboard_presence_watches_resubscribed_total"),
    ).toContain("switchboard_presence_watches_resubscribed_total 2");
  });

  it("tells a watcher that a user went offline during a presence restart, when the grace period ends", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    const GRACE_MS = 400;
    const shards = presenceShards(1, GRACE_MS, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const alice = await gw.connect("alice");
    await subscribe(alice.socket, ["bob"]);
    const lastActive = Date.now();
    await shards.client.heartbeat({ userId: "bob", sessionId: "bob-1" });
    await until(() => alice.socket.presence().length === 1);
    // bob leaves; his offline is due GRACE_MS after his last heartbeat, and presence restarts first.
    await shards.client.endSession({ userId: "bob", sessionId: "bob-1" });
    await shards.restart(0);
    await gw.gateway.renewWatches();
    expect(alice.socket.presence()).toEqual(["bob:online"]); // still in his grace period
    await until(() => alice.socket.presence().length === 2, GRACE_MS + 1_000);
    expect(alice.socket.presence()).toEqual(["bob:online", "bob:offline"]);
    expect(Date.now() - lastActive).toBeGreaterThanOrEqual(GRACE_MS - 50);
  });

  it("subscribes again only on the shard that lost the watches, a few sessions at a time", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    const shards = presenceShards(2, 60_000, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const watched = [userOn(0, 2, "u"), userOn(1, 2, "v")];
    for (let i = 0; i < 40; i++) await subscribe((await gw.connect(`w${i}`)).socket, watched);
    await gw.gateway.renewWatches();
    await shards.restart(1);
    for (const c of shards.calls) c.clear();
    for (const f of shards.inFlight) f.most = 0;
    await gw.gateway.renewWatches();
    expect(shards.calls[0]!.get("subscribe")).toBeUndefined();
    expect(shards.calls[1]!.get("subscribe")).toBe(40);
    expect(shards.inFlight[1]!.most).toBeGreaterThan(1);
    expect(shards.inFlight[1]!.most).toBeLessThanOrEqual(16);
    expect(shards.procs[1]!.watchCounts().sessions).toBe(40);
  });

  it("keeps renewing the lease on every shard while one session's re-subscribe hangs", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    // A lease of 300 ms, renewed here every 100 ms (the gateway's own timer: every 10 s).
    const shards = presenceShards(2, 300, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const [u, v] = [userOn(0, 2, "u"), userOn(1, 2, "v")];
    const alice = await gw.connect("alice");
    await subscribe(alice.socket, [u, v]);
    const mallory = await gw.connect("mallory");
    await subscribe(mallory.socket, [u, v]);
    // Shard 0 restarts; subscribing mallory's watches there again hangs (a call that never returns).
    await shards.restart(0);
    let release!: () => void;
    const hung = new Promise<void>((r) => (release = r));
    shards.hold[0] = (method, req) =>
      method === "subscribe" && (req as { sessionId: string }).sessionId === mallory.conn.sessionId
        ? hung
        : undefined;
    const pass = gw.gateway.renewWatches();
    for (let tick = 0; tick < 8; tick++) {
      const renewed = gw.gateway.renewWatches().then(() => "renewed");
      expect(await Promise.race([renewed, sleep(200).then(() => "waiting")])).toBe("renewed");
      await sleep(100);
    }
    // Well past a 300 ms lease: both shards still hold every watch renewed or never lost.
    expect(shards.procs[0]!.watchCounts().sessions).toBe(1); // alice's, subscribed again
    expect(shards.procs[1]!.watchCounts().sessions).toBe(2);
    release();
    await pass;
    expect(shards.procs[0]!.watchCounts().sessions).toBe(2);
    // Renewed, nothing is owed any more: the next renewal subscribes nothing.
    for (const c of shards.calls) c.clear();
    await gw.gateway.renewWatches();
    expect(shards.calls.map((c) => c.get("subscribe"))).toEqual([undefined, undefined]);
  });

  it("subscribes again where a shard says it lost the watches during a pass that was under way", async () => {
    const { gw, shards } = await aliceWatchingBob();
    await shards.restart(0);
    let release!: () => void;
    const hung = new Promise<void>((r) => (release = r));
    shards.hold[0] = (method) => (method === "subscribe" ? hung : undefined);
    const pass = gw.gateway.renewWatches();
    await until(() => (shards.calls[0]!.get("subscribe") ?? 0) === 1);
    // While the pass's subscribe is on its way, the shard says it lost the watches again (it may
    // have taken the subscribe before losing them).
    const proc = shards.procs[0]!;
    const keep = proc.keepWatches.bind(proc);
    proc.keepWatches = () => {
      proc.keepWatches = keep;
      return true;
    };
    await gw.gateway.renewWatches();
    shards.hold[0] = undefined;
    release();
    await pass;
    for (const c of shards.calls) c.clear();
    await gw.gateway.renewWatches();
    expect(shards.calls[0]!.get("subscribe")).toBe(1);
  });

  it("asks a shard again to end a session whose EndSession it failed", async () => {
    let gw!: Awaited<ReturnType<typeof gatewayOn>>;
    const shards = presenceShards(2, 60_000, (req) => gw.deliver(req));
    gw = await gatewayOn(shards.client);
    const alice = await gw.connect("alice");
    await subscribe(alice.socket, [userOn(0, 2, "u"), userOn(1, 2, "v")]);
    shards.failNext[1]!.add("endSession");
    alice.socket.emit("close", 1000, Buffer.alloc(0));
    await until(() => shards.procs[0]!.watchCounts().sessions === 0);
    expect(shards.procs[1]!.watchCounts().sessions).toBe(1);
    // Asked again after a second, on that shard alone.
    await until(() => shards.procs[1]!.watchCounts().sessions === 0, 3_000);
    expect(shards.calls.map((c) => c.get("endSession"))).toEqual([1, 2]);
    const outcomes = (await gw.metrics.presence.endSessionFailures.get()).values;
    expect(outcomes.map((v) => [v.labels.outcome, v.value])).toEqual([["retried", 1]]);
  });

  it("rate-limits a user's presence subscribes across their connections", async () => {
    const shards = presenceShards(1, 60_000, () => undefined);
    const gw = await gatewayOn(shards.client);
    const devices = [await gw.connect("alice"), await gw.connect("alice")];
    const answers: string[] = [];
    for (let i = 0; i < 50; i++) {
      const { socket } = devices[i % 2]!;
      const id = 1_000 + i;
      socket.frame({ id, subscribePresence: { userIds: [`u${i}`] } });
      await until(() => socket.sent.some((f) => f.replyTo === id));
      const reply = socket.sent.find((f) => f.replyTo === id)!;
      answers.push(reply.kind.case === "error" ? reply.kind.value.reason : (reply.kind.case ?? ""));
    }
    // A burst of 40, then about 10 a second.
    expect(answers.slice(0, 40).every((a) => a === "presenceSnapshot")).toBe(true);
    expect(answers).toContain("RATE_LIMITED");
  });

  it("grants every request of a user's connections renewing side by side, each retrying as told", async () => {
    const shards = presenceShards(1, 60_000, () => undefined);
    const gw = await gatewayOn(shards.client);
    // Five tabs of one user reconnect: each renews 1,000 watches in 10 requests, one after another,
    // asking again exactly retryAfterMs after a RATE_LIMITED (50 requests against a burst of 40).
    const tabs = await Promise.all(Array.from({ length: 5 }, () => gw.connect("alice")));
    let nextId = 1_000;
    let refused = 0;
    const renew = async (socket: FakeSocket, tab: number) => {
      for (let r = 0; r < 10; r++) {
        const userIds = Array.from({ length: 100 }, (_, j) => `t${tab}r${r}u${j}`);
        for (;;) {
          const id = nextId++;
          socket.frame({ id, subscribePresence: { userIds } });
          let reply = socket.sent.find((f) => f.replyTo === id);
          for (; !reply; reply = socket.sent.find((f) => f.replyTo === id)) await sleep(1);
          if (reply.kind.case === "presenceSnapshot") break;
          expect(reply.kind.case === "error" && reply.kind.value.reason).toBe("RATE_LIMITED");
          refused++;
          await sleep(reply.kind.case === "error" ? reply.kind.value.retryAfterMs : 0);
        }
      }
    };
    const started = Date.now();
    const renewed = Promise.all(tabs.map(({ socket }, tab) => renew(socket, tab))).then(() => "renewed");
    // 10 past the burst at 10 a second: about a second (refused for ever before refusals took nothing).
    expect(await Promise.race([renewed, sleep(15_000).then(() => "stuck")])).toBe("renewed");
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(refused).toBeGreaterThan(0);
    expect(shards.procs[0]!.watchCounts().sessions).toBe(5);
    for (const { conn } of tabs) expect(conn.watched.size).toBe(1_000);
  }, 30_000);

  it("does not pass on a change of a user the session no longer watches", async () => {
    const { gw, alice } = await aliceWatchingBob();
    const unwatched = alice.conn.watched.size;
    alice.socket.frame({ id: 7, unsubscribePresence: { userIds: ["bob"] } });
    await until(() => alice.socket.sent.some((f) => f.replyTo === 7));
    expect(alice.conn.watched.size).toBe(unwatched - 1);
    // A relay of a change made before the unsubscribe, arriving after it.
    gw.deliver({
      sessionIds: [alice.conn.sessionId],
      frame: { kind: { case: "presence", value: { status: { userId: "bob", online: true } } } },
    });
    expect(alice.socket.presence()).toEqual([]);
  });

  it("passes on a status the session was last told only once (a router may send it again)", async () => {
    const { gw, alice } = await aliceWatchingBob();
    const online = {
      sessionIds: [alice.conn.sessionId],
      frame: { kind: { case: "presence", value: { status: { userId: "bob", online: true } } } },
    };
    gw.deliver(online);
    gw.deliver(online);
    expect(alice.socket.presence()).toEqual(["bob:online"]);
  });

  it("answers unsubscribePresence ok when the presence shard cannot be told, and passes on no change of that user", async () => {
    const { gw, shards, alice } = await aliceWatchingBob();
    const carol = await gw.connect("carol");
    await subscribe(carol.socket, ["bob"]);
    shards.down[0] = true;
    alice.socket.frame({ id: 8, unsubscribePresence: { userIds: ["bob"] } });
    await until(() => alice.socket.sent.some((f) => f.replyTo === 8));
    expect(alice.socket.sent.find((f) => f.replyTo === 8)!.kind.case).toBe("ok");
    shards.down[0] = false;
    // The shard still holds alice's watch and relays bob's change to her too: the gateway drops it.
    expect(shards.procs[0]!.watchCounts().sessions).toBe(2);
    await shards.client.heartbeat({ userId: "bob", sessionId: "bob-1" });
    await until(() => carol.socket.presence().includes("bob:online"));
    expect(alice.socket.presence()).toEqual([]);
  });

  it("tells a client UNAVAILABLE, not the peer's reason, when a presence shard refuses the gateway's own credential", async () => {
    const shards = presenceShards(1, 60_000, () => undefined);
    const gw = await gatewayOn(shards.client);
    const alice = await gw.connect("alice");
    shards.hold[0] = (method) =>
      method === "subscribe"
        ? Promise.reject(new SwitchboardError(Code.UNAUTHENTICATED, "INVALID_CREDENTIALS", "unknown key id"))
        : undefined;
    alice.socket.frame({ id: 9, subscribePresence: { userIds: ["bob"] } });
    await until(() => alice.socket.sent.some((f) => f.replyTo === 9));
    const reply = alice.socket.sent.find((f) => f.replyTo === 9)!.kind;
    expect(reply.case === "error" && reply.value).toMatchObject({
      code: Code.UNAVAILABLE,
      reason: "UNAVAILABLE",
      retryAfterMs: 1_000,
    });
  });
});
