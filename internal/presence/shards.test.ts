import { describe, expect, it } from "vitest";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { errors } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { inProcessClient, type ServiceClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "./service.js";
import { presenceShardOf, presenceShards, shardedPresenceClient } from "./shards.js";

const store: PresenceStore = {
  setLastActive: async () => undefined,
  lastActive: async () => new Map(),
  close: async () => undefined,
};

function shards(n: number) {
  const relayed: Array<{ shard: number; sessionIds: string[]; userId: string }> = [];
  const presences = Array.from({ length: n }, (_, shard) => {
    const router = {
      relay: async (req: {
        sessionIds?: string[];
        frame?: { kind?: { value?: { status?: { userId: string } } } };
      }) => {
        relayed.push({
          shard,
          sessionIds: req.sessionIds ?? [],
          userId: req.frame?.kind?.value?.status?.userId ?? "",
        });
        return { sessions: 0 };
      },
    } as unknown as ServiceClient<typeof RouterService>;
    return new Presence({
      offlineAfterMs: 60_000,
      store,
      router: () => router,
      log: discardingLogger(),
    });
  });
  const clients = presences.map((p) => inProcessClient(PresenceService, presenceServiceImpl(p, store)));
  return { presences, client: shardedPresenceClient(clients), relayed };
}

describe("presence shards", () => {
  it("spreads users over the shards stably", () => {
    const counts = [0, 0, 0];
    for (let i = 0; i < 3_000; i++) counts[presenceShardOf(`user-${i}`, 3)]!++;
    for (const c of counts) expect(c).toBeGreaterThan(800);
    expect(presenceShardOf("alice", 3)).toBe(presenceShardOf("alice", 3));
  });

  it("keeps each user's state on its shard and merges lists in the caller's order", async () => {
    const { presences, client } = shards(3);
    const users = Array.from({ length: 12 }, (_, i) => `u${i}`);
    for (const u of users) await client.heartbeat({ userId: u, sessionId: `s-${u}` });
    for (const u of users) {
      const home = presenceShardOf(u, 3);
      expect(presences.map((p) => p.status(u).online)).toEqual(presences.map((_, shard) => shard === home));
    }
    const reversed = [...users].reverse();
    const { statuses } = await client.subscribe({ sessionId: "watcher", userIds: [...reversed, "u0"] });
    expect(statuses.map((s) => s.userId)).toEqual(reversed);
    expect(statuses.every((s) => s.online)).toBe(true);
    const { statuses: got } = await client.getPresence({ userIds: ["nobody", "u3"] });
    expect(got.map((s) => [s.userId, s.online])).toEqual([
      ["nobody", false],
      ["u3", true],
    ]);
    await Promise.all(presences.map((p) => p.close()));
  });

  it("ends a session's watches on every shard", async () => {
    const { presences, client, relayed } = shards(3);
    const watched = ["a", "b", "c", "d", "e", "f"];
    await client.subscribe({ sessionId: "w", userIds: watched });
    await client.heartbeat({ userId: "a", sessionId: "sa" });
    expect(relayed.some((r) => r.userId === "a" && r.sessionIds.includes("w"))).toBe(true);
    await client.endSession({ userId: "watcher", sessionId: "w" });
    relayed.length = 0;
    for (const u of watched) await client.heartbeat({ userId: u, sessionId: `s${u}` });
    expect(relayed.filter((r) => r.sessionIds.includes("w"))).toEqual([]);
    await Promise.all(presences.map((p) => p.close()));
  });

  it("renews a watcher's lease on every shard and reports watches lost on any", async () => {
    const { presences, client } = shards(3);
    await client.subscribe({ sessionId: "w", userIds: ["a", "b", "c", "d", "e", "f"], watcherId: "gw" });
    // The first renewal cannot vouch for watches made before it (a shard may have restarted since).
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(true);
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(false);
    // One shard starts afresh: lost, though the others hold theirs.
    const restarted = presences[1]!;
    (restarted as unknown as { leases: Map<string, unknown> }).leases.clear();
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(true);
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(false);
    await Promise.all(presences.map((p) => p.close()));
  });

  it("reports watches lost on one shard though another shard's renewal failed (lost is said once)", async () => {
    const { presences } = shards(2);
    const clients = presences.map((p) => inProcessClient(PresenceService, presenceServiceImpl(p, store)));
    let down = false;
    const failing = {
      ...clients[1]!,
      keepWatches: async (req: { watcherId?: string }) => {
        if (down) throw errors.unavailable("UNAVAILABLE", "shard 1 is restarting");
        return clients[1]!.keepWatches(req);
      },
    };
    const client = shardedPresenceClient([clients[0]!, failing]);
    expect(presenceShards(client)).toEqual([clients[0], failing]);
    expect(presenceShards(clients[0]!)).toEqual([clients[0]]);
    // Spread into another object (process/peers.ts adds close()), the shards are still known.
    const peers = { ...client, close: () => undefined };
    expect(presenceShards(peers)).toEqual([clients[0], failing]);
    await client.keepWatches({ watcherId: "gw" });
    (presences[0] as unknown as { leases: Map<string, unknown> }).leases.clear(); // shard 0 restarted
    down = true;
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(true);
    // Nothing lost, one failed: the failure.
    await expect(client.keepWatches({ watcherId: "gw" })).rejects.toMatchObject({ reason: "UNAVAILABLE" });
    down = false;
    expect((await client.keepWatches({ watcherId: "gw" })).watchesLost).toBe(false);
    await Promise.all(presences.map((p) => p.close()));
  });
});
