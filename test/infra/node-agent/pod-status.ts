/**
 * The Pod status the agent reports, computed from its containers' states: phase (the kubelet's
 * getPhase rules), conditions with stable lastTransitionTime, IPs. Pure, so it is unit-tested; the
 * Pod worker only decides when to write it.
 */

/** Timestamps as the API serialises metav1.Time: RFC 3339, whole seconds. */
export function apiTime(date: Date = new Date()): string {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export interface TerminatedState {
  exitCode: number;
  signal?: number;
  reason: string;
  message?: string;
  startedAt: string;
  finishedAt: string;
  containerID?: string;
}

export type ContainerStateJson =
  | { running: { startedAt: string } }
  | { waiting: { reason: string; message?: string } }
  | { terminated: TerminatedState };

/** A containerStatuses entry as written to the API. */
export interface ContainerStatusJson {
  name: string;
  image: string;
  imageID: string;
  containerID?: string;
  ready: boolean;
  started: boolean;
  restartCount: number;
  state: ContainerStateJson;
  lastState: { terminated?: TerminatedState };
}

export interface ConditionJson {
  type: string;
  status: "True" | "False" | "Unknown";
  lastProbeTime: null;
  lastTransitionTime: string;
  /** null when the condition holds: the strategic merge patch then removes a stale reason. */
  reason: string | null;
  message: string | null;
}

export type Phase = "Pending" | "Running" | "Succeeded" | "Failed";

export interface PodStatusJson {
  phase: Phase;
  reason?: string;
  message?: string;
  hostIP?: string;
  hostIPs?: Array<{ ip: string }>;
  podIP?: string;
  podIPs?: Array<{ ip: string }>;
  startTime?: string;
  conditions: ConditionJson[];
  containerStatuses: ContainerStatusJson[];
}

/**
 * The kubelet's getPhase: a container waiting for its first start keeps the Pod Pending; one
 * waiting to restart counts as stopped; with every container stopped the restart policy decides.
 */
export function podPhase(restartPolicy: string | undefined, statuses: readonly ContainerStatusJson[]): Phase {
  let running = 0;
  let waiting = 0;
  let stopped = 0;
  let succeeded = 0;
  for (const s of statuses) {
    if ("running" in s.state) running++;
    else if ("terminated" in s.state) {
      stopped++;
      if (s.state.terminated.exitCode === 0) succeeded++;
    } else if (s.lastState.terminated) stopped++;
    else waiting++;
  }
  if (waiting > 0 || statuses.length === 0) return "Pending";
  if (running > 0) return "Running";
  const policy = restartPolicy ?? "Always";
  if (policy === "Always") return "Running";
  if (stopped === succeeded) return "Succeeded";
  return policy === "OnFailure" ? "Running" : "Failed";
}

/**
 * The agent's conditions: PodScheduled, Initialized, ContainersReady, Ready. A condition keeps its
 * lastTransitionTime while its status stays the same (`previous`: what was last written, or what
 * the Pod carries). Ready also needs the Pod's readiness gates (`gatesReady`: every gate's
 * condition True).
 */
export function podConditions(
  statuses: readonly ContainerStatusJson[],
  previous: readonly { type?: string; status?: string; lastTransitionTime?: unknown }[],
  gatesReady: boolean,
  now: string,
  terminal: boolean,
): ConditionJson[] {
  const containersReady = statuses.length > 0 && statuses.every((s) => s.ready);
  const notReady = statuses.filter((s) => !s.ready).map((s) => s.name);
  const make = (type: string, ok: boolean, reason?: string, message?: string): ConditionJson => {
    const status = ok ? "True" : "False";
    const old = previous.find((c) => c.type === type);
    const since =
      old?.status === status && typeof old.lastTransitionTime === "string" ? old.lastTransitionTime : now;
    return {
      type,
      status,
      lastProbeTime: null,
      lastTransitionTime: since,
      reason: (!ok && reason) || null,
      message: (!ok && message) || null,
    };
  };
  const reason = terminal ? "PodCompleted" : "ContainersNotReady";
  const message = terminal ? undefined : `containers with unready status: [${notReady.join(" ")}]`;
  return [
    make("PodScheduled", true),
    make("Initialized", true),
    make("ContainersReady", containersReady, reason, message),
    make(
      "Ready",
      containersReady && gatesReady,
      containersReady ? "ReadinessGatesNotReady" : reason,
      message,
    ),
  ];
}
