/**
 * Kubernetes Events (events.k8s.io/v1) about a ChatCluster: what the operator did and what failed.
 * The same event (reason and note) for the same object is not repeated within a minute, so a failing
 * reconcile retried with backoff does not flood the namespace.
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "../../internal/lib/log.js";
import { API_VERSION, type ChatCluster, KIND } from "../api/v1alpha1.js";
import type { KubeClient } from "../kube/client.js";

const REPEAT_AFTER_MS = 60_000;
const REPORTING_CONTROLLER = "switchboard.dev/operator";

export class EventRecorder {
  private readonly recent = new Map<string, number>();

  constructor(
    private readonly kube: KubeClient,
    private readonly instance: string,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Fire and forget: an event that cannot be written is logged, never fails the reconcile. */
  record(
    cluster: ChatCluster,
    type: "Normal" | "Warning",
    reason: string,
    action: string,
    note: string,
  ): void {
    const ns = cluster.metadata.namespace ?? "default";
    const key = `${ns}/${cluster.metadata.name}\u0000${reason}\u0000${note}`;
    const at = this.now();
    if ((this.recent.get(key) ?? -Infinity) > at - REPEAT_AFTER_MS) return;
    this.recent.set(key, at);
    if (this.recent.size > 10_000) this.recent.clear();
    const event = {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: `${cluster.metadata.name}.${randomBytes(8).toString("hex")}`, namespace: ns },
      eventTime: new Date(at).toISOString().replace("Z", "000Z"),
      reportingController: REPORTING_CONTROLLER,
      reportingInstance: this.instance,
      action,
      reason,
      type,
      note: note.slice(0, 1024),
      regarding: {
        apiVersion: API_VERSION,
        kind: KIND,
        name: cluster.metadata.name,
        namespace: ns,
        uid: cluster.metadata.uid,
      },
    };
    this.log.info("event", { cluster: `${ns}/${cluster.metadata.name}`, type, reason, note });
    this.kube.create(event).catch((err: unknown) => this.log.warn("could not record event", { reason, err }));
  }
}
