/**
 * The gateway part of a reconcile: read every gateway Pod's live counts, keep the routing table true
 * (a gateway-gone record for every gateway Pod that went away or restarted), and choose the gateway
 * replica count: the spec's, or the autoscaler's, which drains before it scales down:
 *
 *   1. pick the emptiest gateways, call Drain on them (clients reconnect elsewhere with jitter), and
 *      mark them with `controller.kubernetes.io/pod-deletion-cost` (so the ReplicaSet removes exactly
 *      those Pods) and `switchboard.dev/drain-started-at` (so a restarted operator resumes the wait);
 *   2. wait until their connections have moved or the drain timeout has passed;
 *   3. lower the Deployment's replicas.
 * Everything it needs to resume lives in the cluster (Pod annotations, the Deployment, the ChatCluster
 * status), except the recommendation history of the stabilisation window, which restarts empty: a
 * restarted operator then counts the replicas running as recommended at its start, so it scales down
 * no sooner than one that ran all along.
 */
import type { V1Deployment, V1Pod, V1Secret } from "@kubernetes/client-node";
import type { Logger } from "../../internal/lib/log.js";
import type { ChatCluster, GatewayStatus } from "../api/v1alpha1.js";
import { isNotFound, type KubeClient } from "../kube/client.js";
import {
  chooseGatewaysToDrain,
  decideGatewayReplicas,
  type GatewaySample,
  type Recommendation,
} from "./autoscaler.js";
import type { EventRecorder } from "./events.js";
import type { GatewayAccess, GatewayClients } from "./gateway-client.js";
import type { GoneRecordPublisher, KafkaTarget } from "./gone-records.js";
import { wantsGrpcTls } from "./grpc-tls.js";
import {
  DELETION_COST_ANNOTATION,
  DRAIN_DONE_ANNOTATION,
  DRAIN_STARTED_ANNOTATION,
  GRPC_PORT,
  grpcTlsSecretName,
  selectorLabels,
  selectorString,
  tokenAudience,
} from "./names.js";

/** Cost put on drained gateways: below the default 0 of every other Pod, so they go first. */
export const DRAINED_POD_DELETION_COST = "-1000";

export interface GatewayDeps {
  kube: KubeClient;
  gateways: GatewayClients;
  gone: GoneRecordPublisher;
  events: EventRecorder;
  log: Logger;
  now: () => number;
  /** How often live counts are polled while autoscaling (and during a drain: a fifth of it). */
  pollIntervalMs: number;
}

/** Per-cluster memory between reconciles. */
export interface GatewayMemory {
  /** When this memory began (the operator started following the cluster): decideGatewayReplicas. */
  sinceMs: number;
  history: Recommendation[];
  /** Last epoch seen per gateway Pod (from Stats). */
  epochs: Map<string, number>;
}

export interface GatewayStep {
  replicas: number;
  gateways: GatewayStatus[];
  /** Over all gateways; undefined when a running gateway's count could not be read. */
  connections: number | undefined;
  draining: number;
  /** Gateway-gone records that could not be written (retried on the next reconcile). */
  errors: string[];
  requeueAfterMs?: number;
  /**
   * What says the replica change was made (the drained gateways' done marks, the ScaledUp/ScaledDown
   * Event): run by the reconciler only once the gateway Deployment carrying `replicas` was applied.
   * Made before, a Deployment the API server refuses would leave drained gateways marked as
   * outliving their scale-down, deleted on every reconcile and started again by their ReplicaSet.
   */
  committed?: () => Promise<void>;
}

/**
 * How the operator reaches the cluster's gateways: its token for the cluster's audience, over TLS
 * trusting the CA of the gateways' own Secret when the cluster has gRPC TLS (read every reconcile, so
 * a renewed CA is picked up; `get` by name, as for every Secret the operator reads).
 */
export async function gatewayAccess(kube: KubeClient, cluster: ChatCluster): Promise<GatewayAccess> {
  const audience = tokenAudience(cluster);
  if (!wantsGrpcTls(cluster)) return { audience };
  const secret = await kube.find<V1Secret>({
    apiVersion: "v1",
    kind: "Secret",
    namespace: cluster.metadata.namespace ?? "default",
    name: grpcTlsSecretName(cluster, "gateway"),
  });
  const ca = secret?.data?.["ca.crt"];
  return { audience, tlsCa: ca ? Buffer.from(ca, "base64").toString("utf8") : null };
}

export async function reconcileGateways(
  deps: GatewayDeps,
  cluster: ChatCluster,
  deployment: V1Deployment | undefined,
  kafka: KafkaTarget,
  memory: GatewayMemory,
): Promise<GatewayStep> {
  const ns = cluster.metadata.namespace ?? "default";
  const spec = cluster.spec.gateway;
  const pods = (
    await deps.kube.list<V1Pod>(
      { apiVersion: "v1", kind: "Pod", namespace: ns },
      selectorString(selectorLabels(cluster, "gateway")),
    )
  ).items;
  const errors: string[] = [];
  const access = await gatewayAccess(deps.kube, cluster);

  // --- live counts --------------------------------------------------------------------------
  const alive = pods.filter(
    (p) => !p.metadata?.deletionTimestamp && p.status?.phase === "Running" && p.status.podIP,
  );
  const samples: GatewaySample[] = await Promise.all(
    alive.map(async (pod) => {
      const name = pod.metadata?.name ?? "";
      const draining = pod.metadata?.annotations?.[DRAIN_STARTED_ANNOTATION] !== undefined;
      try {
        const stats = await deps.gateways.stats(`${pod.status?.podIP}:${GRPC_PORT}`, access);
        const known = memory.epochs.get(name);
        // Same Pod, new process: the sessions of the previous one are gone.
        if (known !== undefined && stats.epoch > known) await publishGone(name, known);
        memory.epochs.set(name, stats.epoch);
        return { pod: name, connections: stats.connections, draining: draining || stats.draining };
      } catch (err) {
        deps.log.debug("gateway stats unavailable", { pod: name, err });
        return { pod: name, connections: undefined, draining };
      }
    }),
  );
  deps.gateways.retain(new Set(alive.map((p) => `${p.status?.podIP}:${GRPC_PORT}`)));

  // --- routing table upkeep -----------------------------------------------------------------
  async function publishGone(pod: string, epoch: number): Promise<boolean> {
    try {
      await deps.gone.publish(kafka, pod, epoch);
      deps.events.record(
        cluster,
        "Normal",
        "GatewayGone",
        "PublishGatewayGone",
        `gateway ${pod} epoch ${epoch} is gone`,
      );
      return true;
    } catch (err) {
      errors.push(
        `gateway-gone record for ${pod} not written: ${err instanceof Error ? err.message : String(err)}`,
      );
      return false;
    }
  }
  const present = new Set(pods.filter((p) => !isFinished(p)).map((p) => p.metadata?.name ?? ""));
  const unpublished: GatewayStatus[] = [];
  for (const previous of cluster.status?.gateways ?? []) {
    if (present.has(previous.pod)) continue;
    // Epochs are start times in ms: the deletion time bounds every epoch the Pod ever had.
    const epoch = Math.max(memory.epochs.get(previous.pod) ?? 0, deps.now());
    if (await publishGone(previous.pod, epoch)) memory.epochs.delete(previous.pod);
    else unpublished.push({ pod: previous.pod, connections: 0, draining: true });
  }

  // A count that could not be read is left out (unknown), not shown as 0: an idle gateway and one the
  // operator cannot reach must not look alike.
  const gateways: GatewayStatus[] = [
    ...samples.map((s) => ({
      pod: s.pod,
      ...(s.connections === undefined ? {} : { connections: s.connections }),
      draining: s.draining,
    })),
    // Pods not Running yet (or terminating) are still tracked, so their disappearance is noticed.
    ...pods
      .filter((p) => !isFinished(p) && !alive.includes(p))
      .map((p) => ({
        pod: p.metadata?.name ?? "",
        connections: 0,
        draining: p.metadata?.deletionTimestamp !== undefined,
      })),
    ...unpublished,
  ].sort((a, b) => (a.pod < b.pod ? -1 : a.pod > b.pod ? 1 : 0));
  // The total only when every running gateway's count was read.
  const connections = samples.every((s) => s.connections !== undefined)
    ? samples.reduce((sum, s) => sum + (s.connections ?? 0), 0)
    : undefined;
  const base = { gateways, connections, errors };

  // --- replicas -----------------------------------------------------------------------------
  // Draining: marked by a drain of ours, or saying so itself (a drain by hand, or marks removed): a
  // gateway that refuses every new client is never counted as serving, and is marked as ours would be.
  const drainingPods = alive.filter(
    (p) =>
      p.metadata?.annotations?.[DRAIN_STARTED_ANNOTATION] !== undefined ||
      samples.find((s) => s.pod === p.metadata?.name)?.draining === true,
  );
  const markedAt = new Date(deps.now()).toISOString();
  for (const pod of drainingPods)
    if (await markDraining(deps, ns, pod, markedAt))
      deps.log.info("a draining gateway without a drain's marks is marked as drained", {
        pod: pod.metadata?.name,
      });
  // A drained gateway refuses every new client for good: one that nothing else will remove (autoscaling
  // turned off mid-drain) is deleted, and its Deployment starts a fresh one.
  if (!spec.autoscaling.enabled) {
    await removeDrained(deps, cluster, ns, drainingPods, "autoscaling is off");
    return { ...base, replicas: spec.replicas, draining: 0 };
  }
  const auto = spec.autoscaling;
  const current = deployment?.spec?.replicas ?? auto.minReplicas;
  const poll = deps.pollIntervalMs;

  if (drainingPods.length > 0) {
    // Replicas already lowered, the ReplicaSet has not removed the drained Pods yet: wait for it.
    if (current < alive.length)
      return { ...base, replicas: current, draining: drainingPods.length, requeueAfterMs: poll / 5 };
    // Replicas were lowered for these (or could not be: minReplicas), and they are still here: the
    // ReplicaSet removed another Pod (deletion cost is a preference: it prefers a Pod not ready), or
    // the count stayed. Deleted, not counted again: lowering replicas once more would overshoot.
    const finished = drainingPods.filter(
      (p) => p.metadata?.annotations?.[DRAIN_DONE_ANNOTATION] !== undefined,
    );
    if (finished.length > 0) {
      await removeDrained(deps, cluster, ns, finished, "it outlived its scale-down");
      return { ...base, replicas: current, draining: drainingPods.length, requeueAfterMs: poll / 5 };
    }
    const now = deps.now();
    const done = drainingPods.every((p) => {
      const sample = samples.find((s) => s.pod === p.metadata?.name);
      const started = Date.parse(p.metadata?.annotations?.[DRAIN_STARTED_ANNOTATION] ?? "");
      return sample?.connections === 0 || !(now - started < auto.drainTimeoutSeconds * 1000);
    });
    if (!done) return { ...base, replicas: current, draining: drainingPods.length, requeueAfterMs: poll / 5 };
    const replicas = Math.max(auto.minReplicas, current - drainingPods.length);
    const committed = async () => {
      for (const p of drainingPods)
        await deps.kube
          .mergePatch(
            { apiVersion: "v1", kind: "Pod", namespace: ns, name: p.metadata?.name ?? "" },
            { metadata: { annotations: { [DRAIN_DONE_ANNOTATION]: new Date(now).toISOString() } } },
          )
          .catch((err: unknown) => {
            // The ReplicaSet may have removed it already (the Deployment was just lowered): done.
            if (!isNotFound(err)) throw err;
          });
      deps.events.record(
        cluster,
        "Normal",
        "ScaledDown",
        "ScaleGateways",
        `gateways ${current} → ${replicas} after draining ${drainingPods.map((p) => p.metadata?.name).join(", ")}`,
      );
    };
    return { ...base, replicas, draining: drainingPods.length, requeueAfterMs: poll, committed };
  }

  const decision = decideGatewayReplicas({
    spec: auto,
    current,
    gateways: samples,
    history: memory.history,
    nowMs: deps.now(),
    knownSinceMs: memory.sinceMs,
  });
  memory.history = decision.history;
  if (decision.held)
    deps.events.record(
      cluster,
      "Warning",
      "ScaleDownHeld",
      "ScaleGateways",
      `not scaling gateways down to ${decision.held.replicas}: the live counts of ${decision.held.by.join(", ")} could not be read`,
    );
  if (decision.target > current) {
    const committed = async () =>
      deps.events.record(
        cluster,
        "Normal",
        "ScaledUp",
        "ScaleGateways",
        `gateways ${current} → ${decision.target}: ${decision.reason}`,
      );
    return { ...base, replicas: decision.target, draining: 0, requeueAfterMs: poll, committed };
  }
  if (decision.target < current) {
    const victims = chooseGatewaysToDrain(samples, current - decision.target);
    if (victims.length === 0) return { ...base, replicas: current, draining: 0, requeueAfterMs: poll };
    const windowMs = Math.min(10_000, (auto.drainTimeoutSeconds * 1000) / 2);
    for (const name of victims) {
      const pod = alive.find((p) => p.metadata?.name === name) ?? { metadata: { name } };
      // Mark first: if Drain fails the mark still makes this Pod the one removed.
      await markDraining(deps, ns, pod, markedAt);
      try {
        await deps.gateways.drain(`${pod?.status?.podIP}:${GRPC_PORT}`, windowMs, access);
      } catch (err) {
        deps.log.warn("drain call failed; the pod is removed after the drain timeout", { pod: name, err });
      }
    }
    deps.events.record(
      cluster,
      "Normal",
      "DrainingGateways",
      "ScaleGateways",
      `draining ${victims.join(", ")} before gateways ${current} → ${current - victims.length}: ${decision.reason}`,
    );
    return { ...base, replicas: current, draining: victims.length, requeueAfterMs: poll / 5 };
  }
  return { ...base, replicas: current, draining: 0, requeueAfterMs: poll };
}

/**
 * Gives a gateway the marks of a drain where it lacks them: the deletion cost (so the ReplicaSet
 * removes it, not a serving one) and the drain's start (its timeout counts from `startedAt`, so a
 * restarted operator resumes the wait). Whether it lacked any.
 */
async function markDraining(deps: GatewayDeps, ns: string, pod: V1Pod, startedAt: string): Promise<boolean> {
  const annotations = pod.metadata?.annotations ?? {};
  const missing: Record<string, string> = {};
  if (annotations[DELETION_COST_ANNOTATION] !== DRAINED_POD_DELETION_COST)
    missing[DELETION_COST_ANNOTATION] = DRAINED_POD_DELETION_COST;
  if (annotations[DRAIN_STARTED_ANNOTATION] === undefined) missing[DRAIN_STARTED_ANNOTATION] = startedAt;
  if (Object.keys(missing).length === 0) return false;
  await deps.kube.mergePatch(
    { apiVersion: "v1", kind: "Pod", namespace: ns, name: pod.metadata?.name ?? "" },
    { metadata: { annotations: missing } },
  );
  pod.metadata = { ...pod.metadata, annotations: { ...annotations, ...missing } };
  return true;
}

/** Deletes drained gateway Pods that nothing else will remove (each refuses every new client). */
async function removeDrained(
  deps: GatewayDeps,
  cluster: ChatCluster,
  ns: string,
  pods: readonly V1Pod[],
  why: string,
): Promise<void> {
  if (pods.length === 0) return;
  const names = pods.map((p) => p.metadata?.name ?? "");
  for (const name of names) await deps.kube.delete({ apiVersion: "v1", kind: "Pod", namespace: ns, name });
  deps.events.record(
    cluster,
    "Normal",
    "DrainedGatewayRemoved",
    "ScaleGateways",
    `deleted drained ${names.join(", ")}: ${why}`,
  );
}

function isFinished(pod: V1Pod): boolean {
  return pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed";
}
