/**
 * Node registration and heartbeat: the Node object and its Lease, as the kubelet keeps them.
 *
 * register() creates the Node (or refreshes the one a previous run left: labels, our taint, pod
 * CIDR) and reports it Ready with capacity, allocatable, addresses and nodeInfo. Then the Lease in
 * kube-node-lease is renewed every 10 s, and the Ready condition's heartbeat every 30 s: the node
 * lifecycle controller marks a node that does neither within its grace period (40-50 s) NotReady
 * and evicts its Pods. The Lease is the cheap signal (the kubelet, too, writes the Node status
 * itself far less often); each status write wakes every Node watcher, the scheduler among them.
 * deregister() deletes the Node (and its Lease) on a clean shutdown.
 *
 * The taint switchboard.dev/node-agent=true:NoSchedule keeps every Pod that does not tolerate it on
 * kwok's fake node, so tests that do not ask for real processes are not affected by this node.
 */
import type { V1Node } from "@kubernetes/client-node";
import type { Logger } from "../../../internal/lib/log.js";
import { isConflict, isNotFound } from "../../../operator/kube/client.js";
import { sleep } from "../../../operator/runtime/sleep.js";
import type { AgentApi } from "./api.js";
import { apiTime } from "./pod-status.js";

export const AGENT_LABEL = "switchboard.dev/node-agent";
export const AGENT_TAINT = { key: AGENT_LABEL, value: "true", effect: "NoSchedule" } as const;
export const LEASE_NAMESPACE = "kube-node-lease";
const LEASE_DURATION_SECONDS = 40;
const AGENT_VERSION = "switchboard-node-agent/0.1";
/** The Ready heartbeat goes with every third Lease renewal. */
const STATUS_EVERY_BEATS = 3;

export interface NodeOptions {
  name: string;
  nodeIP: string;
  podCIDR: string;
  /** capacity and allocatable (cpu, memory, pods, ephemeral-storage). */
  resources: Record<string, string>;
  heartbeatMs?: number;
  log: Logger;
}

/** MicroTime, as Lease renewTime wants it: RFC 3339 with microseconds. */
function microTime(date = new Date()): string {
  return date.toISOString().replace(/Z$/, "000Z");
}

const enc = encodeURIComponent;

export class NodeRegistration {
  private readonly heartbeatMs: number;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly readySince = apiTime();
  private nodeUid = "";

  constructor(
    private readonly api: AgentApi,
    private readonly o: NodeOptions,
  ) {
    this.heartbeatMs = o.heartbeatMs ?? 10_000;
  }

  private get path(): string {
    return `/api/v1/nodes/${enc(this.o.name)}`;
  }

  /** Creates or refreshes the Node and reports it Ready; renews the Lease once. */
  async register(): Promise<void> {
    const client = this.api.client;
    const labels = {
      "kubernetes.io/hostname": this.o.name,
      "kubernetes.io/os": "linux",
      "kubernetes.io/arch": process.arch === "x64" ? "amd64" : process.arch,
      [AGENT_LABEL]: "true",
    };
    let node: V1Node | undefined;
    try {
      node = (await client.request("GET", this.path)) as V1Node;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (!node) {
      node = (await client.request("POST", "/api/v1/nodes", {
        apiVersion: "v1",
        kind: "Node",
        metadata: { name: this.o.name, labels },
        spec: { podCIDR: this.o.podCIDR, podCIDRs: [this.o.podCIDR], taints: [AGENT_TAINT] },
      })) as V1Node;
      this.o.log.info("node registered", { node: this.o.name });
    } else {
      // Left by a previous run: make sure of our labels and taint; keep the controllers' taints.
      const taints = (node.spec?.taints ?? []).filter((t) => t.key !== AGENT_TAINT.key);
      const patch: Record<string, unknown> = {
        metadata: { labels },
        spec: {
          taints: [...taints, AGENT_TAINT],
          ...(node.spec?.podCIDR ? {} : { podCIDR: this.o.podCIDR }),
        },
      };
      node = (await client.request("PATCH", this.path, patch, "application/merge-patch+json")) as V1Node;
      this.o.log.info("node refreshed", { node: this.o.name });
    }
    this.nodeUid = node.metadata?.uid ?? "";
    await this.reportStatus(true);
    await this.renewLease();
  }

  /** Heartbeats until deregister(). Failures are logged and retried at the next beat. */
  start(): void {
    this.loop ??= (async () => {
      const signal = this.abort.signal;
      for (let beat = 1; !signal.aborted; beat++) {
        await sleep(this.heartbeatMs, signal);
        if (signal.aborted) break;
        try {
          await this.renewLease();
          if (beat % STATUS_EVERY_BEATS === 0) await this.reportStatus(false);
        } catch (err) {
          this.o.log.warn("node heartbeat failed", { err });
        }
      }
    })();
  }

  /** Stops the heartbeats and deletes the Node and its Lease. */
  async deregister(): Promise<void> {
    this.abort.abort();
    await this.loop;
    for (const path of [this.leasePath(), this.path]) {
      try {
        await this.api.client.request("DELETE", path);
      } catch (err) {
        if (!isNotFound(err)) this.o.log.warn("could not delete", { path, err });
      }
    }
    this.o.log.info("node deregistered", { node: this.o.name });
  }

  private leasePath(): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases/${enc(this.o.name)}`;
  }

  private async renewLease(): Promise<void> {
    const client = this.api.client;
    const spec = {
      holderIdentity: this.o.name,
      leaseDurationSeconds: LEASE_DURATION_SECONDS,
      renewTime: microTime(),
    };
    let lease: { metadata?: Record<string, unknown>; spec?: Record<string, unknown> } | undefined;
    try {
      lease = (await client.request("GET", this.leasePath())) as typeof lease;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (!lease) {
      await client.request("POST", `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases`, {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: {
          name: this.o.name,
          namespace: LEASE_NAMESPACE,
          // As the kubelet's: the Lease goes when the Node goes.
          ownerReferences: [{ apiVersion: "v1", kind: "Node", name: this.o.name, uid: this.nodeUid }],
        },
        spec,
      });
      return;
    }
    try {
      await client.request("PUT", this.leasePath(), { ...lease, spec: { ...lease.spec, ...spec } });
    } catch (err) {
      // Someone else wrote it meanwhile: the next beat reads it again.
      if (!isConflict(err)) throw err;
    }
  }

  /** Writes the Node's status: Ready (heartbeat now), no pressure, capacity, addresses, nodeInfo. */
  private async reportStatus(full: boolean): Promise<void> {
    const now = apiTime();
    const condition = (type: string, status: string, reason: string, message: string) => ({
      type,
      status,
      reason,
      message,
      lastHeartbeatTime: now,
      lastTransitionTime: this.readySince,
    });
    const status: Record<string, unknown> = {
      conditions: [
        condition(
          "MemoryPressure",
          "False",
          "KubeletHasSufficientMemory",
          "node agent does not track memory",
        ),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent does not track disk"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "node agent does not track pids"),
        condition("Ready", "True", "KubeletReady", "switchboard node agent is posting ready status"),
      ],
    };
    if (full) {
      Object.assign(status, {
        capacity: this.o.resources,
        allocatable: this.o.resources,
        addresses: [
          { type: "InternalIP", address: this.o.nodeIP },
          { type: "Hostname", address: this.o.name },
        ],
        daemonEndpoints: { kubeletEndpoint: { Port: 0 } },
        nodeInfo: {
          architecture: process.arch === "x64" ? "amd64" : process.arch,
          operatingSystem: "linux",
          kubeletVersion: AGENT_VERSION,
          kubeProxyVersion: "",
          containerRuntimeVersion: `${AGENT_VERSION} (local processes)`,
          kernelVersion: "",
          osImage: "host",
          bootID: "",
          machineID: "",
          systemUUID: "",
        },
      });
    }
    await this.api.client.request("PATCH", `${this.path}/status`, { status }, "application/merge-patch+json");
  }
}
