/** How presence tells watchers: through the user's router, in bounded parts, after a restart too. */
import { create, toBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it, vi } from "vitest";
import { RelayRequestSchema, type RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { errors } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import type { ServiceClient } from "../lib/rpc.js";
import { Presence } from "./service.js";

type RelayInit = Parameters<ServiceClient<typeof RouterService>["relay"]>[0];

function memoryStore(): PresenceStore & { saved: Map<string, number> } {
  const saved = new Map<string, number>();
  return {
    saved,
    setLastActive: async (userId, atMs) => void saved.set(userId, atMs),
    lastActive: async (userIds) =>
      new Map(userIds.flatMap((u) => (saved.has(u) ? [[u, saved.get(u)!] as const] : []))),
    close: async () => undefined,
  };
}

const online = (r: RelayInit) =>
  (r.frame?.kind?.value as { status?: { online?: boolean } } | undefined)?.status?.online ?? false;

afterEach(() => {
  vi.useRealTimers();
});

describe("presence relays", () => {
  it("relays every change of a user through that user's router", async () => {
    const used: string[] = [];
    const p = new Presence({
      offlineAfterMs: 60_000,
      store: memoryStore(),
      router: (userId) => ({
        relay: async () => {
          used.push(userId);
          return { $typeName: "switchboard.router.v1.RelayResponse", sessions: 0 };
        },
      }),
      log: discardingLogger(),
    });
    await p.subscribe("w", ["bob", "carol"]);
    p.heartbeat("bob", "b1");
    p.heartbeat("carol", "c1");
    expect(used).toEqual(["bob", "carol"]);
    await p.close();
  });

  it("splits a change for very many watchers into relays a gRPC message can hold", async () => {
    const relayed: RelayInit[] = [];
    const p = new Presence({
      offlineAfterMs: 60_000,
      store: memoryStore(),
      router: () => ({
        relay: async (req) => {
          relayed.push(req);
          return { $typeName: "switchboard.router.v1.RelayResponse", sessions: 0 };
        },
      }),
      log: discardingLogger(),
    });
    // 240,000 sessions of the gateway's 16-character ids: one relay of them all was over 4 MiB.
    const watchers = Array.from({ length: 240_000 }, (_, i) => `s${String(i).padStart(15, "0")}`);
    for (const w of watchers) await p.subscribe(w, ["celebrity"]);
    p.heartbeat("celebrity", "c1");
    expect(relayed.length).toBeGreaterThan(1);
    for (const r of relayed) {
      expect(toBinary(RelayRequestSchema, create(RelayRequestSchema, r)).length).toBeLessThan(
        2 * 1024 * 1024,
      );
      expect(online(r)).toBe(true);
    }
    expect(relayed.flatMap((r) => r.sessionIds ?? []).sort()).toEqual(watchers);
    await p.close();
  });

  it("counts what it holds and the relays that failed (switchboard_presence_*)", async () => {
    const metrics = createMetrics();
    const p = new Presence({
      offlineAfterMs: 60_000,
      store: memoryStore(),
      router: () => ({
        relay: async () => {
          throw errors.unavailable("UNAVAILABLE", "no router");
        },
      }),
      log: discardingLogger(),
      metrics: metrics.presence,
    });
    await p.subscribe("w1", ["bob", "carol"]);
    await p.subscribe("w2", ["bob"]);
    p.heartbeat("bob", "b1");
    p.heartbeat("bob", "b2");
    p.heartbeat("carol", "c1");
    await new Promise((r) => setTimeout(r, 5));
    const value = async (name: string) => {
      const text = await metrics.registry.getSingleMetricAsString(name);
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      return Number(line?.split(" ")[1]);
    };
    expect(await value("switchboard_presence_users_online")).toBe(2);
    expect(await value("switchboard_presence_sessions")).toBe(3);
    expect(await value("switchboard_presence_watches")).toBe(3);
    expect(await value("switchboard_presence_relays_failed_total")).toBe(2);
    await p.close();
    expect(await value("switchboard_presence_watches")).toBe(0); // a closed service is no longer counted
  });
});

describe("presence after a restart", () => {
  it("shows a user active within the grace period online, and tells their watchers when it ends", async () => {
    vi.useFakeTimers({ now: 1_000_000 });
    const GRACE_MS = 30_000;
    const store = memoryStore();
    const relayed: RelayInit[] = [];
    const router = {
      relay: async (req: RelayInit) => {
        relayed.push(req);
        return { $typeName: "switchboard.router.v1.RelayResponse" as const, sessions: 0 };
      },
    };
    const before = new Presence({
      offlineAfterMs: GRACE_MS,
      store,
      router: () => router,
      log: discardingLogger(),
    });
    await before.subscribe("alice-1", ["bob"], "gw");
    before.heartbeat("bob", "bob-1");
    vi.advanceTimersByTime(5_000);
    before.endSession("bob", "bob-1"); // offline due 30 s after his last heartbeat
    vi.advanceTimersByTime(5_000);
    await before.close(); // a rolling restart, 10 s later
    relayed.length = 0;

    const after = new Presence({
      offlineAfterMs: GRACE_MS,
      store,
      router: () => router,
      log: discardingLogger(),
    });
    const [bob] = await after.subscribe("alice-1", ["bob"], "gw");
    expect(bob).toMatchObject({ userId: "bob", online: true });
    expect((await after.subscribe("dave-1", ["never-seen"]))[0]).toMatchObject({ online: false });
    await vi.advanceTimersByTimeAsync(19_000);
    expect(relayed).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(relayed.map((r) => [r.sessionIds, online(r)])).toEqual([[["alice-1"], false]]);
    expect(after.status("bob").online).toBe(false);
    await after.close();
  });

  it("keeps a user who heartbeats again online, with no change told", async () => {
    vi.useFakeTimers({ now: 1_000_000 });
    const store = memoryStore();
    store.saved.set("bob", Date.now() - 2_000); // stored by the process before this one
    const relayed: RelayInit[] = [];
    const p = new Presence({
      offlineAfterMs: 30_000,
      store,
      router: () => ({
        relay: async (req) => {
          relayed.push(req);
          return { $typeName: "switchboard.router.v1.RelayResponse", sessions: 0 };
        },
      }),
      log: discardingLogger(),
    });
    expect((await p.subscribe("alice-1", ["bob"]))[0]).toMatchObject({ online: true });
    for (let i = 0; i < 12; i++) {
      p.heartbeat("bob", "bob-1");
      await vi.advanceTimersByTimeAsync(5_000);
    }
    expect(relayed).toEqual([]);
    expect(p.status("bob").online).toBe(true);
    await p.close();
  });
});
