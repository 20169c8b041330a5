import { describe, expect, it } from "vitest";
import type { GatewayAutoscaling } from "../api/v1alpha1.js";
import { chooseGatewaysToDrain, decideGatewayReplicas, type GatewaySample } from "./autoscaler.js";

const spec: GatewayAutoscaling = {
  enabled: true,
  minReplicas: 2,
  maxReplicas: 10,
  targetConnectionsPerPod: 1000,
  stabilizationWindowSeconds: 300,
  drainTimeoutSeconds: 60,
};
const gw = (pod: string, connections: number | undefined, draining = false): GatewaySample => ({
  pod,
  connections,
  draining,
});

describe("decideGatewayReplicas", () => {
  it("scales up at once to ceil(connections / target), capped at max", () => {
    const d = decideGatewayReplicas({
      spec,
      current: 2,
      gateways: [gw("a", 2500), gw("b", 1001)],
      history: [],
      nowMs: 0,
    });
    expect(d.recommended).toBe(4);
    expect(d.target).toBe(4);
    const capped = decideGatewayReplicas({
      spec,
      current: 2,
      gateways: [gw("a", 50_000), gw("b", 1)],
      history: [],
      nowMs: 0,
    });
    expect(capped.target).toBe(10);
  });

  it("never goes below min", () => {
    const d = decideGatewayReplicas({
      spec,
      current: 2,
      gateways: [gw("a", 0), gw("b", 0)],
      history: [],
      nowMs: 0,
    });
    expect(d.recommended).toBe(2);
    expect(d.target).toBe(2);
  });

  it("scales down only to the highest recommendation within the stabilisation window", () => {
    const gateways = [gw("a", 100), gw("b", 100), gw("c", 100), gw("d", 100)];
    const history = [
      { atMs: 0, replicas: 4 },
      { atMs: 200_000, replicas: 3 },
    ];
    // At 250 s the 4 from t=0 is still in the window: stay at 4.
    expect(decideGatewayReplicas({ spec, current: 4, gateways, history, nowMs: 250_000 }).target).toBe(4);
    // At 301 s it has left the window; the 3 at 200 s has not.
    const later = decideGatewayReplicas({ spec, current: 4, gateways, history, nowMs: 301_000 });
    expect(later.target).toBe(3);
    expect(later.history.map((r) => r.atMs)).toEqual([200_000, 301_000]);
  });

  it("after a restart, scales down only once a whole window has passed since it began to follow", () => {
    const gateways = [gw("a", 100), gw("b", 100), gw("c", 100), gw("d", 100)];
    // An operator that started at 1,000 s knows nothing of the recommendations before it.
    const early = decideGatewayReplicas({
      spec,
      current: 4,
      gateways,
      history: [],
      nowMs: 1_010_000,
      knownSinceMs: 1_000_000,
    });
    expect(early.recommended).toBe(2);
    expect(early.target).toBe(4);
    const stillEarly = decideGatewayReplicas({
      spec,
      current: 4,
      gateways,
      history: early.history,
      nowMs: 1_299_000,
      knownSinceMs: 1_000_000,
    });
    expect(stillEarly.target).toBe(4);
    const later = decideGatewayReplicas({
      spec,
      current: 4,
      gateways,
      history: stillEarly.history,
      nowMs: 1_301_000,
      knownSinceMs: 1_000_000,
    });
    expect(later.target).toBe(2);
    // Scaling up is never held back.
    const busy = [gw("a", 1000), gw("b", 1000), gw("c", 1000), gw("d", 1000), gw("e", 1000)];
    expect(
      decideGatewayReplicas({
        spec,
        current: 4,
        gateways: busy,
        history: [],
        nowMs: 1_010_000,
        knownSinceMs: 1_000_000,
      }).target,
    ).toBe(5);
  });

  it("does not scale down when a gateway's count is unknown, but still scales up", () => {
    const gateways = [gw("a", 10), gw("b", undefined), gw("c", 10)];
    const held = decideGatewayReplicas({ spec, current: 3, gateways, history: [], nowMs: 0 });
    expect(held.target).toBe(3);
    // It says which counts held it (for the ScaleDownHeld event).
    expect(held.held).toEqual({ replicas: 2, by: ["b"] });
    const busy = [gw("a", 4000), gw("b", undefined), gw("c", 10)];
    const up = decideGatewayReplicas({ spec, current: 3, gateways: busy, history: [], nowMs: 0 });
    expect(up.target).toBe(5);
    expect(up.held).toBeUndefined();
    // Nothing held when no scale-down was due anyway (within the window's recommendations).
    const steady = decideGatewayReplicas({
      spec,
      current: 3,
      gateways,
      history: [{ atMs: 0, replicas: 3 }],
      nowMs: 1000,
    });
    expect(steady.held).toBeUndefined();
  });

  it("brings replicas outside min..max back inside", () => {
    expect(decideGatewayReplicas({ spec, current: 12, gateways: [], history: [], nowMs: 0 }).target).toBe(10);
    expect(decideGatewayReplicas({ spec, current: 1, gateways: [], history: [], nowMs: 0 }).target).toBe(2);
  });
});

describe("chooseGatewaysToDrain", () => {
  it("picks the emptiest gateways that are not draining and whose counts are known", () => {
    const gateways = [gw("a", 50), gw("b", 3), gw("c", 0, true), gw("d", 7), gw("e", undefined), gw("f", 3)];
    expect(chooseGatewaysToDrain(gateways, 2)).toEqual(["b", "f"]);
    expect(chooseGatewaysToDrain(gateways, 3)).toEqual(["b", "f", "d"]);
    expect(chooseGatewaysToDrain(gateways, 0)).toEqual([]);
  });
});
