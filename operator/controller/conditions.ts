/**
 * Status conditions (Ready, Progressing, Degraded; PodMonitor and GrpcTLS when the spec asks for them) from
 * what the reconciler observed, as a pure function. Each condition carries the generation it describes; lastTransitionTime moves only when
 * the status flips, as the Kubernetes API conventions ask.
 */
import type { V1Condition, V1Deployment, V1Pod, V1StatefulSet } from "@kubernetes/client-node";
import type { ComponentName } from "../api/v1alpha1.js";
import type { GrpcTlsState } from "./grpc-tls.js";

export interface ComponentObservation {
  desired: number;
  /** Pods the workload has now, old ones of a rollout included. */
  replicas: number;
  readyReplicas: number;
  updatedReplicas: number;
  /** The workload controller has seen the latest spec (its observedGeneration). */
  observed: boolean;
  /**
   * The rollout is stuck, and why: a Deployment reports `Progressing=False` with reason
   * `ProgressDeadlineExceeded` (past its progressDeadlineSeconds, 10 minutes by default) for the spec
   * it has observed; a StatefulSet reports no such condition, so one of its Pods of the revision being
   * rolled out unready for as long (STATEFULSET_PROGRESS_DEADLINE_MS) counts the same.
   */
  progressDeadlineExceeded?: string;
}

/**
 * How long a Pod of a StatefulSet's update revision may stay unready before its rollout counts as
 * stuck: the default progressDeadlineSeconds of a Deployment, which StatefulSets lack. A StatefulSet
 * replaces one Pod at a time, so a rollout waits on each; none of id's or presence's takes minutes.
 */
export const STATEFULSET_PROGRESS_DEADLINE_MS = 600_000;

/**
 * What the status needs of a component's Deployment or StatefulSet, as the API server returned it;
 * of a StatefulSet, also its Pods (those its selector matches) as of `now`.
 */
export function observeWorkload(
  w: V1Deployment | V1StatefulSet | undefined,
  statefulSetPods?: { pods: readonly V1Pod[]; now: Date },
): ComponentObservation {
  const observed = (w?.status?.observedGeneration ?? 0) >= (w?.metadata?.generation ?? 0);
  const progressing = w?.status?.conditions?.find((c) => c.type === "Progressing");
  // An older generation's verdict says nothing about the spec just applied.
  const stuck = !observed
    ? undefined
    : progressing?.status === "False" && progressing.reason === "ProgressDeadlineExceeded"
      ? progressing.message || `${w?.metadata?.name} has not progressed`
      : statefulSetPods && w
        ? stuckStatefulSetPod(w as V1StatefulSet, statefulSetPods.pods, statefulSetPods.now)
        : undefined;
  return {
    desired: w?.spec?.replicas ?? 0,
    replicas: w?.status?.replicas ?? 0,
    readyReplicas: w?.status?.readyReplicas ?? 0,
    updatedReplicas: w?.status?.updatedReplicas ?? 0,
    observed,
    ...(stuck === undefined ? {} : { progressDeadlineExceeded: stuck }),
  };
}

/** The workload is short of updated or ready replicas for the spec it has observed. */
export function rollingOut(w: V1Deployment | V1StatefulSet): boolean {
  const desired = w.spec?.replicas ?? 0;
  return (w.status?.updatedReplicas ?? 0) < desired || (w.status?.readyReplicas ?? 0) < desired;
}

/**
 * The first Pod of the StatefulSet's update revision that has been unready (or not yet started) for
 * STATEFULSET_PROGRESS_DEADLINE_MS, described; undefined when there is none. A bad image, a crash
 * loop or no room on the nodes keeps the rollout's current Pod unready, and the StatefulSet controller
 * waits for it without end.
 */
function stuckStatefulSetPod(sts: V1StatefulSet, pods: readonly V1Pod[], now: Date): string | undefined {
  const revision = sts.status?.updateRevision;
  if (!revision) return undefined;
  for (const pod of pods) {
    if (pod.metadata?.labels?.["controller-revision-hash"] !== revision || pod.metadata.deletionTimestamp)
      continue;
    const ready = pod.status?.conditions?.find((c) => c.type === "Ready");
    if (ready?.status === "True") continue;
    // The API server's timestamps, as strings or as the client library's Dates.
    const since = ready?.lastTransitionTime ?? pod.metadata.creationTimestamp;
    if (since === undefined) continue;
    const unreadyMs = now.getTime() - new Date(since).getTime();
    if (!(unreadyMs >= STATEFULSET_PROGRESS_DEADLINE_MS)) continue;
    const waiting = pod.status?.containerStatuses?.find((c) => c.state?.waiting?.reason)?.state?.waiting
      ?.reason;
    return (
      `Pod ${pod.metadata.name} of revision ${revision} not ready for ${Math.floor(unreadyMs / 1000)} s` +
      (waiting ? ` (${waiting})` : "")
    );
  }
  return undefined;
}

export interface Observation {
  generation: number;
  provisioned: boolean;
  /** Why the last provisioning of the Kafka topics and Cassandra schema failed. */
  provisionError?: string;
  /** Why applying the owned objects failed. */
  applyError?: string;
  /** spec.settings left out of the configuration, each with why (config.ts, refusedSettings). */
  settingsRefused?: string[];
  components: Partial<Record<ComponentName, ComponentObservation>>;
  drainingGateways: number;
  /**
   * The PodMonitor the spec asks for: applied, not creatable because the API server serves no
   * PodMonitor kind (no Prometheus Operator CRDs), or not applied yet (storage not provisioned, or the
   * apply failed). Undefined when the spec asks for none: no PodMonitor condition.
   */
  podMonitor?: "Created" | "CRDNotInstalled" | "Pending";
  /** The gRPC certificates when spec.grpc.tls is enabled (undefined otherwise: no GrpcTLS condition). */
  grpcTls?: GrpcTlsState;
}

type Status = "True" | "False" | "Unknown";

export function computeConditions(
  previous: V1Condition[] | undefined,
  o: Observation,
  now: Date,
): V1Condition[] {
  const lagging = Object.entries(o.components)
    // Settled: the latest spec seen, every Pod updated and ready, and no old Pod left (a surge).
    // Gateways draining before a scale-down say not ready on purpose (no new clients): not lagging.
    .filter(
      ([name, c]) =>
        c &&
        (c.readyReplicas < c.desired - (name === "gateway" ? o.drainingGateways : 0) ||
          c.updatedReplicas < c.desired ||
          c.replicas > c.desired ||
          !c.observed),
    )
    .map(([name, c]) => `${name} ${c?.readyReplicas ?? 0}/${c?.desired ?? 0} ready`);
  const error = o.provisionError ?? o.applyError;
  // Rollouts the workload controller gave up waiting for (a Pod that never gets ready: a bad image,
  // a crash loop, no room on the nodes), named by component.
  const stuck = Object.entries(o.components)
    .filter(([, c]) => c?.progressDeadlineExceeded !== undefined)
    .map(([name, c]) => `${name}: ${c?.progressDeadlineExceeded}`);

  let ready: [Status, string, string];
  if (o.provisionError && !o.provisioned)
    ready = [
      "False",
      "ProvisioningFailed",
      `Kafka topics or Cassandra schema not ready: ${o.provisionError}`,
    ];
  else if (!o.provisioned)
    ready = ["False", "Provisioning", "creating the Kafka topics and the Cassandra schema"];
  // A spec that could not be applied is not the cluster's state, whatever the old Pods say (and the
  // components are not even read then).
  else if (o.applyError) ready = ["False", "ApplyFailed", `the spec could not be applied: ${o.applyError}`];
  else if (lagging.length > 0) ready = ["False", "ComponentsNotReady", lagging.join(", ")];
  else ready = ["True", "AllComponentsReady", "every component has all its replicas ready"];

  let progressing: [Status, string, string];
  if (!o.provisioned)
    progressing = ["True", "Provisioning", "creating the Kafka topics and the Cassandra schema"];
  // Nothing of this spec reached the workloads (and they are not read): the cluster cannot be moving
  // towards it, nor said to match it.
  else if (o.applyError)
    progressing = ["False", "ApplyFailed", `the spec could not be applied: ${o.applyError}`];
  else if (o.drainingGateways > 0)
    progressing = ["True", "DrainingGateways", `${o.drainingGateways} gateway(s) draining before scale-down`];
  // As a Deployment says it: a rollout past its deadline is no longer progressing.
  else if (stuck.length > 0) progressing = ["False", "ProgressDeadlineExceeded", stuck.join("; ")];
  else if (lagging.length > 0) progressing = ["True", "RollingOut", lagging.join(", ")];
  else progressing = ["False", "Stable", "the cluster matches its spec"];

  // The reason is one of a fixed set (as the API conventions ask of reasons); the message names the
  // components.
  let degraded: [Status, string, string];
  if (error) degraded = ["True", o.provisionError ? "ProvisioningFailed" : "ApplyFailed", error];
  else if (stuck.length > 0)
    degraded = ["True", "ProgressDeadlineExceeded", `rollout stuck: ${stuck.join("; ")}`];
  else if (o.settingsRefused?.length)
    degraded = [
      "True",
      "SettingsRefused",
      `spec.settings not applied (the others are): ${o.settingsRefused.join("; ")}`,
    ];
  else degraded = ["False", "AsExpected", "no errors"];

  const conditions = [
    condition(previous, "Ready", ready, o.generation, now),
    condition(previous, "Progressing", progressing, o.generation, now),
    condition(previous, "Degraded", degraded, o.generation, now),
  ];
  // Not part of Ready: monitoring is the Prometheus Operator's business, the chat works without it.
  if (o.podMonitor) {
    const podMonitor: Record<typeof o.podMonitor, [Status, string, string]> = {
      Created: ["True", "Created", "the PodMonitor scrapes /metrics of every Pod"],
      CRDNotInstalled: [
        "False",
        "CRDNotInstalled",
        "the cluster serves no monitoring.coreos.com/v1 PodMonitor: install the Prometheus Operator's CRDs; no PodMonitor was created",
      ],
      Pending: ["Unknown", "Pending", "applied with the other objects, which are not applied yet"],
    };
    conditions.push(condition(previous, "PodMonitor", podMonitor[o.podMonitor], o.generation, now));
  }
  // Not part of Ready either: Pods without their Secret do not start, which Ready reports already;
  // this condition says why.
  if (o.grpcTls)
    conditions.push(condition(previous, "GrpcTLS", grpcTlsCondition(o.grpcTls), o.generation, now));
  return conditions;
}

function grpcTlsCondition(state: GrpcTlsState): [Status, string, string] {
  switch (state.kind) {
    case "Ready":
      return ["True", "CertificatesReady", "every serving component has its gRPC certificate"];
    case "CertificatesNotReady":
      return ["False", "CertificatesNotReady", `waiting for cert-manager: ${state.notReady.join("; ")}`];
    case "CertManagerNotInstalled":
      return [
        "False",
        "CertManagerNotInstalled",
        "spec.grpc.tls.issuerRef is set, but the cluster serves no cert-manager.io/v1 Certificate: install cert-manager (or provide the Secrets and remove issuerRef); no Certificate was created, and the Pods wait for their Secrets",
      ];
    case "SecretsMissing":
      return [
        "False",
        "SecretsMissing",
        `the Pods wait for their gRPC TLS Secrets (tls.crt, tls.key, ca.crt): ${state.missing.join("; ")}`,
      ];
    case "Pending":
      return ["Unknown", "Pending", "applied with the other objects, which are not applied yet"];
  }
}

function condition(
  previous: V1Condition[] | undefined,
  type: string,
  [status, reason, message]: [Status, string, string],
  generation: number,
  now: Date,
): V1Condition {
  const before = previous?.find((c) => c.type === type);
  // Whole seconds: metav1.Time has no fraction, and the time only moves when the status flips.
  const lastTransitionTime =
    before && before.status === status
      ? new Date(before.lastTransitionTime)
      : new Date(Math.floor(now.getTime() / 1000) * 1000);
  return {
    type,
    status,
    reason,
    // The API server caps messages at 32 KiB.
    message: message.slice(0, 1024),
    observedGeneration: generation,
    lastTransitionTime,
  };
}
