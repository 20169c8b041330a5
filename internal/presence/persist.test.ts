import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { discardingLogger } from "../lib/log.js";
import type { ServiceClient } from "../lib/rpc.js";
import { Presence } from "./service.js";

/** A store that records every write and keeps the last value per user. */
function recordingStore() {
  const writes: Array<[string, number]> = [];
  const stored = new Map<string, number>();
  const store: PresenceStore = {
    setLastActive: async (userId, atMs) => {
      writes.push([userId, atMs]);
      stored.set(userId, atMs);
    },
    lastActive: async (userIds) =>
      new Map(userIds.flatMap((u) => (stored.has(u) ? [[u, stored.get(u)!]] : []))),
    close: async () => undefined,
  };
  return { store, writes, stored };
}

const router = { relay: async () => ({ sessions: 0 }) } as unknown as ServiceClient<typeof RouterService>;

describe("presence: last_active_at writes", () => {
  let now = 1_000_000;
  beforeEach(() => {
    vi.useFakeTimers();
    now = 1_000_000;
  });
  afterEach(() => vi.useRealTimers());

  const presenceOver = (store: PresenceStore, offlineAfterMs = 30_000) =>
    new Presence({
      offlineAfterMs,
      store,
      router: () => router,
      log: discardingLogger(),
      now: () => now,
    });

  it("go out together a second after the first of a storm of connects, one write per user", async () => {
    const { store, writes } = recordingStore();
    const presence = presenceOver(store);
    for (let i = 0; i < 1_000; i++) presence.heartbeat(`u${i}`, `s${i}`);
    await vi.advanceTimersByTimeAsync(999);
    expect(writes).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(writes).toHaveLength(1_000);
    expect(new Set(writes.map(([u]) => u)).size).toBe(1_000);
    expect(writes.every(([, at]) => at === 1_000_000)).toBe(true);
    await presence.close();
  });

  it("shows the unsaved value to readers after the user's state is gone, and writes the latest", async () => {
    const { store, writes, stored } = recordingStore();
    const presence = presenceOver(store, 100);
    presence.heartbeat("alice", "s1");
    presence.endSession("alice", "s1");
    // Offline after the 100 ms grace period: the in-memory state goes, the write has not happened yet.
    now += 100;
    await vi.advanceTimersByTimeAsync(100);
    expect(writes).toHaveLength(0);
    expect(presence.status("alice")).toMatchObject({ online: false, lastActiveAtMs: 1_000_000n });
    await vi.advanceTimersByTimeAsync(900);
    expect(stored.get("alice")).toBe(1_000_000);
    expect(writes.filter(([u]) => u === "alice")).toHaveLength(1);
    await presence.close();
  });

  it("writes what is unsaved when it closes", async () => {
    const { store, stored } = recordingStore();
    const presence = presenceOver(store);
    presence.heartbeat("bob", "s1");
    await presence.close();
    expect(stored.get("bob")).toBe(1_000_000);
  });

  it("writes the latest last_active_at of users still online when it closes", async () => {
    const { store, stored } = recordingStore();
    const presence = presenceOver(store);
    presence.heartbeat("carol", "s1"); // stored a second later
    await vi.advanceTimersByTimeAsync(1_000);
    expect(stored.get("carol")).toBe(1_000_000);
    now += 3_000;
    presence.heartbeat("carol", "s1"); // within the 5 s between writes: not stored
    presence.heartbeat("dave", "s2");
    presence.endSession("dave", "s2"); // going offline, not yet
    await vi.advanceTimersByTimeAsync(2_000);
    expect(stored.get("carol")).toBe(1_000_000);
    await presence.close();
    expect(stored.get("carol")).toBe(1_003_000);
    expect(stored.get("dave")).toBe(1_003_000);
  });
});
