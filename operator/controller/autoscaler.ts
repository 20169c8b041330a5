/**
 * The gateway autoscaler's decision, as a pure function (the reconciler does the I/O). Like the
 * HorizontalPodAutoscaler's defaults: scale up at once, scale down only to the highest recommendation
 * seen during the stabilisation window, so a dip in connections does not shed gateways that the next
 * minute needs again. Unlike it, the metric is live connections per Pod, and a scale-down drains
 * first (see reconcile-gateways.ts).
 */
import type { GatewayAutoscaling } from "../api/v1alpha1.js";

export interface GatewaySample {
  pod: string;
  /** Undefined when the Pod's Stats could not be read. */
  connections: number | undefined;
  draining: boolean;
}

export interface Recommendation {
  atMs: number;
  replicas: number;
}

export interface AutoscaleInput {
  spec: GatewayAutoscaling;
  /** The Deployment's replicas now. */
  current: number;
  gateways: GatewaySample[];
  /** Earlier recommendations (any age: the function drops those outside the window). */
  history: Recommendation[];
  nowMs: number;
  /**
   * Since when this operator has followed the cluster (it started, or took the lead). What was
   * recommended before is not known, so until a whole window has passed since then the replicas
   * running now count as recommended then, as the HorizontalPodAutoscaler does: a restarted operator
   * never scales down sooner than one that ran all along. Unset: known all along.
   */
  knownSinceMs?: number;
}

export interface AutoscaleDecision {
  /** Replicas the connections call for now, within min..max. */
  recommended: number;
  /** Replicas to run: `current` when nothing should change. */
  target: number;
  /** History to keep for the next call (within the window, this recommendation included). */
  history: Recommendation[];
  reason: string;
  /**
   * A scale-down to `replicas` that the gateways `by`, whose counts could not be read, alone kept
   * from happening.
   */
  held?: { replicas: number; by: string[] };
}

const clamp = (n: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, n));

export function decideGatewayReplicas(input: AutoscaleInput): AutoscaleDecision {
  const { spec, current, gateways, nowMs } = input;
  const known = gateways.filter((g) => g.connections !== undefined);
  const total = known.reduce((sum, g) => sum + (g.connections ?? 0), 0);
  const recommended = clamp(
    Math.ceil(total / spec.targetConnectionsPerPod),
    spec.minReplicas,
    spec.maxReplicas,
  );
  const windowStart = nowMs - spec.stabilizationWindowSeconds * 1000;
  const history = [
    ...input.history.filter((r) => r.atMs > windowStart),
    { atMs: nowMs, replicas: recommended },
  ];
  const describe = `${total} connections on ${known.length}/${gateways.length} gateways, target ${spec.targetConnectionsPerPod}/pod`;

  if (current < spec.minReplicas || current > spec.maxReplicas) {
    const target = clamp(current, spec.minReplicas, spec.maxReplicas);
    return {
      recommended,
      target,
      history,
      reason: `replicas ${current} outside ${spec.minReplicas}..${spec.maxReplicas}`,
    };
  }
  if (recommended > current) return { recommended, target: recommended, history, reason: describe };
  const unknownBefore = input.knownSinceMs !== undefined && input.knownSinceMs > windowStart;
  const stabilized = Math.max(...history.map((r) => r.replicas), unknownBefore ? current : 0);
  // Missing counts could hide load: never scale down on partial information.
  if (known.length < gateways.length)
    return {
      recommended,
      target: current,
      history,
      reason: `${describe}; not scaling down without every count`,
      ...(stabilized < current
        ? {
            held: {
              replicas: stabilized,
              by: gateways.filter((g) => g.connections === undefined).map((g) => g.pod),
            },
          }
        : {}),
    };
  if (stabilized < current) return { recommended, target: stabilized, history, reason: describe };
  return { recommended, target: current, history, reason: describe };
}

/** The `count` gateways to drain for a scale-down: the emptiest ones not already draining. */
export function chooseGatewaysToDrain(gateways: GatewaySample[], count: number): string[] {
  return gateways
    .filter((g) => !g.draining && g.connections !== undefined)
    .sort((a, b) => (a.connections ?? 0) - (b.connections ?? 0) || (a.pod < b.pod ? -1 : 1))
    .slice(0, Math.max(0, count))
    .map((g) => g.pod);
}
