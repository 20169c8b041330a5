import { afterEach, describe, expect, it, vi } from "vitest";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { discardingLogger } from "../lib/log.js";
import type { ServiceClient } from "../lib/rpc.js";
import { Presence } from "./service.js";

const store: PresenceStore = {
  setLastActive: async () => undefined,
  lastActive: async () => new Map(),
  close: async () => undefined,
};

const LEASE_MS = 1_000;

/** A presence service whose relays (the sessions each status change went to) are recorded. */
function presence(relayed: string[][] = []): Presence {
  const router = {
    relay: async (req: { sessionIds?: string[] }) => {
      relayed.push([...(req.sessionIds ?? [])].sort());
      return { sessions: 0 };
    },
  } as unknown as ServiceClient<typeof RouterService>;
  return new Presence({ offlineAfterMs: LEASE_MS, store, router: () => router, log: discardingLogger() });
}

describe("presence watch leases", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("drops the watches of a gateway that stopped renewing them (it died), keeps the renewed ones", async () => {
    vi.useFakeTimers();
    const relayed: string[][] = [];
    const p = presence(relayed);
    expect(p.keepWatches("gw-live")).toBe(true); // taken at the gateway's start: nothing to redo
    await p.subscribe("s-dead-1", ["alice", "bob"], "gw-dead");
    await p.subscribe("s-dead-2", ["alice"], "gw-dead");
    await p.subscribe("s-live", ["alice"], "gw-live");
    expect(p.watchCounts()).toEqual({ sessions: 3, watchers: 2 });
    // gw-live renews three times per lease; gw-dead is never heard from again.
    for (let i = 0; i < 9; i++) {
      vi.advanceTimersByTime(LEASE_MS / 3);
      expect(p.keepWatches("gw-live")).toBe(false);
    }
    expect(p.watchCounts()).toEqual({ sessions: 1, watchers: 1 });
    p.heartbeat("alice", "a1");
    expect(relayed).toEqual([["s-live"]]);
    await p.close();
  });

  it("tells a gateway whose lease it does not hold that its watches are lost, once", async () => {
    vi.useFakeTimers();
    const p = presence();
    expect(p.keepWatches("gw")).toBe(true);
    await p.subscribe("s", ["alice"], "gw");
    expect(p.keepWatches("gw")).toBe(false);
    // Silent past the lease (a long network split): the watches went, and the gateway hears so.
    vi.advanceTimersByTime(LEASE_MS * 2);
    expect(p.watchCounts()).toEqual({ sessions: 0, watchers: 0 });
    expect(p.keepWatches("gw")).toBe(true);
    expect(p.keepWatches("gw")).toBe(false);
    // A restarted service knows no lease; one made by a Subscribe since vouches for nothing earlier.
    const restarted = presence();
    await restarted.subscribe("s2", ["bob"], "gw");
    expect(restarted.keepWatches("gw")).toBe(true);
    expect(restarted.keepWatches("gw")).toBe(false);
    await p.close();
    await restarted.close();
  });

  it("takes a session off its gateway's lease when it ends or unwatches everyone; no lease without a watcher id", async () => {
    vi.useFakeTimers();
    const relayed: string[][] = [];
    const p = presence(relayed);
    await p.subscribe("s1", ["alice", "bob"], "gw");
    await p.subscribe("s2", ["alice"], "gw");
    await p.subscribe("s-legacy", ["alice"]);
    p.unsubscribe("s1", ["alice", "bob"]);
    p.endSession("carol", "s2");
    expect(p.watchCounts()).toEqual({ sessions: 1, watchers: 1 });
    // A watch made without a watcher id lasts until its session ends, however long.
    vi.advanceTimersByTime(LEASE_MS * 5);
    expect(p.watchCounts()).toEqual({ sessions: 1, watchers: 0 });
    p.heartbeat("alice", "a1");
    expect(relayed).toEqual([["s-legacy"]]);
    await p.close();
  });

  it("forgets a user who went offline while watched once the last watcher leaves", async () => {
    vi.useFakeTimers();
    const p = presence();
    const users = Array.from({ length: 100 }, (_, i) => `u${i}`);
    await p.subscribe("watcher-1", users, "gw");
    await p.subscribe("watcher-2", users.slice(0, 10), "gw");
    for (const u of users) {
      p.heartbeat(u, `s-${u}`);
      p.endSession(u, `s-${u}`);
    }
    vi.advanceTimersByTime(LEASE_MS + 10); // offline; watched, so still held
    expect(p.usersHeld).toBe(100);
    p.unsubscribe("watcher-1", users);
    expect(p.usersHeld).toBe(10); // u0-u9 are still watched by watcher-2
    expect(p.status("u50")).toMatchObject({ online: false });
    p.endSession("nobody", "watcher-2"); // its session ends: it unwatches everyone
    expect(p.usersHeld).toBe(0);
    // A watched user who is online stays, and goes when offline and unwatched.
    await p.subscribe("watcher-3", ["v"], "gw");
    p.heartbeat("v", "sv");
    p.unsubscribe("watcher-3", ["v"]);
    expect(p.usersHeld).toBe(1);
    p.endSession("v", "sv");
    vi.advanceTimersByTime(LEASE_MS + 10);
    expect(p.usersHeld).toBe(0);
    await p.close();
  });
});
