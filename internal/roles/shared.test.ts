import { create } from "@bufbuild/protobuf";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { RelayResponseSchema } from "../../gen/switchboard/router/v1/router_pb.js";
import type { ConversationRecord } from "../backends/types.js";
import type { Conversations } from "../conversations/index.js";
import { errors } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { announceGroupChanges } from "./shared.js";

type Change = (group: ConversationRecord, audience: "members" | readonly string[]) => void;

describe("announceGroupChanges", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function announcing() {
    const listeners: Change[] = [];
    const convs = {
      onGroupChange: (listener: Change) => listeners.push(listener),
    } as unknown as Conversations;
    const routers = { down: false, relayed: [] as string[], changedAt: [] as number[] };
    const metrics = createMetrics();
    const announcer = announceGroupChanges(
      convs,
      { members: async () => ["alice", "bob"] },
      {
        forKey: () => ({
          relay: async ({ userIds, frame }) => {
            if (routers.down) throw errors.unavailable("UNAVAILABLE", "every router is restarting");
            const value = frame?.kind?.case === "conversation" ? frame.kind.value : undefined;
            routers.relayed.push(`${value?.conversation?.name} to ${userIds?.join(",")}`);
            routers.changedAt.push(Number(value?.changedAtMs));
            return create(RelayResponseSchema);
          },
        }),
      },
      discardingLogger(),
      metrics,
    );
    const group = (name: string): ConversationRecord => ({
      id: "g:1",
      kind: "group",
      name,
      owner: "alice",
      open: false,
      createdAtMs: 1,
      memberCount: 2,
      postPolicy: "everyone",
      addPolicy: "everyone",
      delivery: "push",
      version: 1,
    });
    const change = (name: string) => {
      for (const listener of listeners) listener(group(name), "members");
    };
    return { change, routers, announcer, metrics };
  }

  it("relays a change again once a router takes it, and only the newest change of a group", async () => {
    const { change, routers, announcer } = announcing();
    routers.down = true;
    change("Team");
    const changedAt = Date.now();
    change("Team B");
    await vi.advanceTimersByTimeAsync(0);
    routers.down = false;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(routers.relayed).toEqual(["Team B to alice,bob"]);
    // The time of the change, not of the retry that got it out: clients keep the newest by it.
    expect(routers.changedAt).toEqual([changedAt]);
    await announcer.close();
  });

  it("gives a change up after about 30 s without a router, and counts it", async () => {
    const { change, routers, announcer, metrics } = announcing();
    routers.down = true;
    change("Team");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(routers.relayed).toEqual([]);
    expect(
      await metrics.registry.getSingleMetricAsString("switchboard_event_relays_dropped_total"),
    ).toContain('switchboard_event_relays_dropped_total{event="conversation",reason="failed"} 1');
    await announcer.close();
  });
});
