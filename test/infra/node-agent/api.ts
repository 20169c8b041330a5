/**
 * The API calls a node agent makes, in one place: reads of what a Pod refers to (ConfigMaps,
 * Secrets, the kubernetes Service, service account tokens), Pod status writes and the final delete,
 * Events. It rides on the operator's small REST client (operator/kube/client.ts: kubeconfig
 * credentials, the API server's Status in errors) rather than a second one.
 */
import type { KubeConfig, V1ConfigMap, V1Pod, V1Secret, V1Service } from "@kubernetes/client-node";
import type { Logger } from "../../../internal/lib/log.js";
import { isNotFound, KubeApiError, KubeClient } from "../../../operator/kube/client.js";
import { apiTime, type PodStatusJson } from "./pod-status.js";

export const AGENT_COMPONENT = "switchboard-node-agent";

const enc = encodeURIComponent;

export const isGone = (err: unknown): boolean =>
  err instanceof KubeApiError && (err.status === 404 || err.status === 409);

/** The same Event (object, reason, message) is recorded at most once per this window. */
const EVENT_REPEAT_MS = 60_000;
const EVENT_MEMORY_MAX = 2_000;

export class AgentApi {
  readonly client: KubeClient;
  /** When each recent Event was last recorded: a failing probe does not post one per period. */
  private readonly recentEvents = new Map<string, number>();

  constructor(
    kubeConfig: KubeConfig,
    private readonly nodeName: string,
    private readonly log: Logger,
  ) {
    this.client = new KubeClient(kubeConfig);
  }

  private async find<T>(path: string): Promise<T | undefined> {
    try {
      return (await this.client.request("GET", path)) as T;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  configMap(ns: string, name: string): Promise<V1ConfigMap | undefined> {
    return this.find(`/api/v1/namespaces/${enc(ns)}/configmaps/${enc(name)}`);
  }

  secret(ns: string, name: string): Promise<V1Secret | undefined> {
    return this.find(`/api/v1/namespaces/${enc(ns)}/secrets/${enc(name)}`);
  }

  service(ns: string, name: string): Promise<V1Service | undefined> {
    return this.find(`/api/v1/namespaces/${enc(ns)}/services/${enc(name)}`);
  }

  /** A service account token bound to the Pod (TokenRequest), as the kubelet requests for projected volumes. */
  async serviceAccountToken(
    pod: V1Pod,
    audience: string | undefined,
    expirationSeconds: number | undefined,
  ): Promise<string> {
    const ns = pod.metadata?.namespace ?? "default";
    const sa = pod.spec?.serviceAccountName || "default";
    const body = {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: {
        audiences: audience ? [audience] : [],
        expirationSeconds: expirationSeconds ?? 3607,
        boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod.metadata?.name, uid: pod.metadata?.uid },
      },
    };
    const res = (await this.client.request(
      "POST",
      `/api/v1/namespaces/${enc(ns)}/serviceaccounts/${enc(sa)}/token`,
      body,
    )) as { status?: { token?: string } };
    if (!res.status?.token) throw new Error(`TokenRequest for ${ns}/${sa} returned no token`);
    return res.status.token;
  }

  /**
   * Writes the Pod's status through the status subresource as a strategic merge patch (conditions
   * merge by type, so the scheduler's and others' conditions stay). The patch carries the uid: a
   * Pod deleted and recreated under the same name is not written to (409).
   */
  async patchPodStatus(ns: string, name: string, uid: string, status: PodStatusJson): Promise<void> {
    await this.client.request(
      "PATCH",
      `/api/v1/namespaces/${enc(ns)}/pods/${enc(name)}/status`,
      { metadata: { uid }, status },
      "application/strategic-merge-patch+json",
    );
  }

  /** The kubelet's last word on a Pod: delete it now (grace 0), only if it is still this uid. */
  async deletePod(ns: string, name: string, uid: string): Promise<void> {
    try {
      await this.client.request("DELETE", `/api/v1/namespaces/${enc(ns)}/pods/${enc(name)}`, {
        apiVersion: "v1",
        kind: "DeleteOptions",
        gracePeriodSeconds: 0,
        preconditions: { uid },
      });
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }

  /** Records an Event about a Pod (or one of its containers), rate-limited; failures are only logged. */
  event(pod: V1Pod, type: "Normal" | "Warning", reason: string, message: string, container?: string): void {
    const key = `${pod.metadata?.uid}|${container ?? ""}|${reason}|${message}`;
    const at = Date.now();
    const last = this.recentEvents.get(key);
    if (last !== undefined && at - last < EVENT_REPEAT_MS) return;
    if (this.recentEvents.size >= EVENT_MEMORY_MAX)
      for (const [k, t] of this.recentEvents) if (at - t >= EVENT_REPEAT_MS) this.recentEvents.delete(k);
    if (this.recentEvents.size >= EVENT_MEMORY_MAX) return; // a storm: drop rather than grow
    this.recentEvents.set(key, at);
    const ns = pod.metadata?.namespace ?? "default";
    const now = apiTime();
    const involvedObject: Record<string, unknown> = {
      apiVersion: "v1",
      kind: "Pod",
      namespace: ns,
      name: pod.metadata?.name,
      uid: pod.metadata?.uid,
    };
    if (container) involvedObject.fieldPath = `spec.containers{${container}}`;
    const body = {
      apiVersion: "v1",
      kind: "Event",
      metadata: { generateName: `${pod.metadata?.name}.`, namespace: ns },
      involvedObject,
      type,
      reason,
      message: message.slice(0, 1024),
      source: { component: AGENT_COMPONENT, host: this.nodeName },
      reportingComponent: AGENT_COMPONENT,
      reportingInstance: this.nodeName,
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    };
    this.client
      .request("POST", `/api/v1/namespaces/${enc(ns)}/events`, body)
      .catch((err: unknown) => this.log.debug("could not record an event", { reason, err }));
  }
}
