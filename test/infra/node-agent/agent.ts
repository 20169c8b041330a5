/**
 * NodeAgent: a kubelet stand-in for one Node, running every container of the Pods bound to it as a
 * local process. It owns, and closes in stop():
 *   - the Node registration and its heartbeats (node.ts);
 *   - an informer on the Pods with spec.nodeName=<node> (the operator's list+watch cache: relists on
 *     410 and when a watch ends or goes silent);
 *   - one PodWorker per Pod uid (pod-worker.ts), each owning its container processes;
 *   - the Pod IP pool (ipam.ts) and the local route of the Pod CIDR (network.ts).
 * Start: processes left by a previous run (pid files) are killed first, the Pods of the node are
 * listed, their IPs re-claimed, then every Pod is synced. Stop: every process gets SIGTERM (SIGKILL
 * after 5 s), then the Node is deleted.
 */
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type KubeConfig, type V1Pod, Watch } from "@kubernetes/client-node";
import { createLogger, type Logger } from "../../../internal/lib/log.js";
import { Informer } from "../../../operator/runtime/informer.js";
import { AgentApi } from "./api.js";
import { kubernetesServiceEnv } from "./env.js";
import type { ImageMapping } from "./image.js";
import { IpPool } from "./ipam.js";
import { PodNetwork } from "./network.js";
import { NodeRegistration } from "./node.js";
import { PodWorker } from "./pod-worker.js";
import { killLeftovers } from "./supervisor.js";

export interface NodeAgentOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  /**
   * Pod IPs come from here. Outside 127.0.0.0/8 (e.g. 198.19.0.0/16) the agent routes the range
   * locally and Pods can be Service endpoints; inside it they cannot (see network.ts).
   */
  podCIDR: string;
  /** The cluster DNS server written into every Pod's resolv.conf. */
  dnsIP: string;
  stateDir: string;
  images: ImageMapping[];
  /** The Node's InternalIP and every Pod's hostIP. Default 127.0.0.1. */
  nodeIP?: string;
  /** Allocatable pods. Default 64. */
  maxPods?: number;
  clusterDomain?: string;
  /** Per container log file cap. Default 20 MiB. */
  logBytesMax?: number;
  /** Logs of this many deleted Pods are kept. Default 50. */
  keptLogDirs?: number;
  /** Grace of the SIGTERM each process gets when the agent stops. Default 5 s. */
  shutdownGraceMs?: number;
  heartbeatMs?: number;
  /**
   * `host:port` that KUBERNETES_SERVICE_HOST/PORT name instead of the `kubernetes` Service's
   * ClusterIP, which no kube-proxy routes here: what lets in-cluster clients of the Pods (token
   * reviews, ADR 0007) reach the API server. Unset: the ClusterIP, as a kubelet sets it.
   */
  apiServer?: string;
  log?: Logger;
}

/** The repository root, from the source (test/infra/node-agent) or the build (dist/test/infra/node-agent). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) || dir.endsWith("/dist")) {
    const up = resolve(dir, "..");
    if (up === dir) throw new Error("node agent: no package.json above this file");
    dir = up;
  }
  return dir;
}

/** The ESM shim every Node program of a Pod imports (NODE_OPTIONS), in the source tree. */
export const SHIM_PATH = join(repoRoot(), "test", "infra", "node-agent", "listen-shim.mjs");

const SERVICE_ENV_TTL_MS = 60_000;

export class NodeAgent {
  private readonly api: AgentApi;
  private readonly node: NodeRegistration;
  private readonly informer: Informer<V1Pod>;
  private readonly ips: IpPool;
  private readonly network: PodNetwork;
  private readonly workers = new Map<string, PodWorker>();
  /** namespace/name → uid of the worker the informer's key currently means. */
  private readonly uidByKey = new Map<string, string>();
  private readonly removals = new Set<Promise<void>>();
  private readonly log: Logger;
  private readonly maxPods: number;
  private readonly resources: Record<string, string>;
  private serviceEnvCache: { at: number; env: Record<string, string> } | undefined;
  private started = false;
  private stopping: Promise<void> | undefined;

  constructor(private readonly o: NodeAgentOptions) {
    this.log = (o.log ?? createLogger()).child({ component: "node-agent", node: o.nodeName });
    this.api = new AgentApi(o.kubeConfig, o.nodeName, this.log);
    this.ips = new IpPool(o.podCIDR);
    this.network = new PodNetwork(o.podCIDR, o.stateDir, this.log);
    this.maxPods = o.maxPods ?? 64;
    this.resources = { cpu: "8", memory: "16Gi", "ephemeral-storage": "100Gi", pods: String(this.maxPods) };
    this.node = new NodeRegistration(this.api, {
      name: o.nodeName,
      nodeIP: this.nodeIP,
      podCIDR: o.podCIDR,
      resources: this.resources,
      log: this.log,
      ...(o.heartbeatMs === undefined ? {} : { heartbeatMs: o.heartbeatMs }),
    });
    const path = "/api/v1/pods";
    const fieldSelector = `spec.nodeName=${o.nodeName}`;
    this.informer = new Informer<V1Pod>({
      kubeConfig: o.kubeConfig,
      name: `pods-on-${o.nodeName}`,
      path,
      list: async () =>
        (await this.api.client.request(
          "GET",
          `${path}?fieldSelector=${encodeURIComponent(fieldSelector)}`,
        )) as {
          items: V1Pod[];
          metadata?: { resourceVersion?: string };
        },
      // The informer takes label selectors only: the watch gets the field selector here.
      watchFactory: async (watchPath, query, onEvent, onDone) => {
        const controller = await new Watch(o.kubeConfig).watch(
          watchPath,
          { ...query, fieldSelector },
          onEvent,
          onDone,
        );
        return () => controller.abort();
      },
      relistPeriodMs: 60_000,
      silenceTimeoutMs: 60_000,
      log: this.log,
    });
    this.informer.on((event, pod) => this.onPod(event, pod));
  }

  get nodeIP(): string {
    return this.o.nodeIP ?? "127.0.0.1";
  }

  /** Kills leftovers, registers the Node, lists the Pods and starts running them. */
  async start(): Promise<void> {
    const pidDir = join(this.o.stateDir, "pids");
    mkdirSync(pidDir, { recursive: true });
    const killed = killLeftovers(pidDir, this.o.stateDir, this.log);
    if (killed > 0) await new Promise((r) => setTimeout(r, 200)); // let the kernel release their ports
    this.network.setUp();
    await this.node.register();
    this.node.start();
    await this.informer.start();
    // Pods adopted from a previous run keep their IPs: claim them all before anyone allocates.
    const pods = this.informer.list();
    for (const pod of pods) {
      const ip = pod.status?.podIP;
      if (ip && pod.metadata?.uid && !pod.spec?.hostNetwork) this.ips.claim(pod.metadata.uid, ip);
    }
    this.started = true;
    for (const pod of pods) this.onPod("add", pod);
    this.removeStaleDirs(new Set(pods.map((p) => p.metadata?.uid ?? "")));
    this.log.info("node agent started", {
      pods: pods.length,
      podCIDR: this.o.podCIDR,
      dns: this.o.dnsIP,
      stateDir: this.o.stateDir,
    });
  }

  /** Stops every process (SIGTERM, SIGKILL after the shutdown grace) and deletes the Node. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.started = false;
      await this.informer.stop();
      const grace = this.o.shutdownGraceMs ?? 5_000;
      await Promise.all([...this.workers.values()].map((w) => w.shutdown(grace)));
      await Promise.all(this.removals);
      await this.node.deregister();
      this.network.tearDown();
      this.log.info("node agent stopped");
    })();
    return this.stopping;
  }

  private onPod(event: "add" | "update" | "delete", pod: V1Pod): void {
    if (!this.started) return; // the initial list is handled by start()
    const uid = pod.metadata?.uid;
    if (!uid) return;
    const key = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
    if (event === "delete") {
      if (this.uidByKey.get(key) === uid) this.uidByKey.delete(key);
      this.remove(uid);
      return;
    }
    // Same name, new uid (a missed delete): the old Pod is gone.
    const previous = this.uidByKey.get(key);
    if (previous && previous !== uid) this.remove(previous);
    this.uidByKey.set(key, uid);
    let worker = this.workers.get(uid);
    if (!worker) {
      worker = new PodWorker(pod, {
        api: this.api,
        nodeName: this.o.nodeName,
        nodeIP: this.nodeIP,
        dnsIP: this.o.dnsIP,
        clusterDomain: this.o.clusterDomain ?? "cluster.local",
        stateDir: this.o.stateDir,
        images: this.o.images,
        shimPath: SHIM_PATH,
        // The "image" is this repository: its files must stay visible under any volume mounted over
        // one of its ancestors (an emptyDir on /tmp when the checkout is under /tmp).
        imageRoots: [repoRoot()],
        logBytesMax: this.o.logBytesMax ?? 20 * 1024 * 1024,
        nodeAllocatable: this.resources,
        ips: this.ips,
        serviceEnv: () => this.serviceEnv(),
        admit: () => [...this.workers.values()].filter((w) => w.active).length < this.maxPods,
        log: this.log,
      });
      this.workers.set(uid, worker);
    }
    worker.update(pod);
  }

  private remove(uid: string): void {
    const worker = this.workers.get(uid);
    if (!worker) return;
    this.workers.delete(uid);
    const done = worker
      .removed()
      .catch((err: unknown) => this.log.error("could not clean up a removed pod", { pod: worker.name, err }))
      .finally(() => {
        this.removals.delete(done);
        this.pruneLogs();
      });
    this.removals.add(done);
  }

  /** KUBERNETES_SERVICE_HOST/PORT from the `kubernetes` Service's ClusterIP, cached for a minute. */
  private async serviceEnv(): Promise<Record<string, string>> {
    const cached = this.serviceEnvCache;
    if (cached && Date.now() - cached.at < SERVICE_ENV_TTL_MS) return cached.env;
    let env: Record<string, string> = {};
    const api = this.o.apiServer === undefined ? undefined : /^(.+):(\d+)$/.exec(this.o.apiServer);
    if (api) {
      env = kubernetesServiceEnv(api[1]!, Number(api[2]));
      this.serviceEnvCache = { at: Date.now(), env };
      return env;
    }
    try {
      const svc = await this.api.service("default", "kubernetes");
      const ip = svc?.spec?.clusterIP;
      const port = svc?.spec?.ports?.find((p) => p.name === "https")?.port ?? svc?.spec?.ports?.[0]?.port;
      if (ip && ip !== "None" && port) env = kubernetesServiceEnv(ip, port);
    } catch (err) {
      this.log.warn("could not read the kubernetes Service", { err });
    }
    this.serviceEnvCache = { at: Date.now(), env };
    return env;
  }

  /** Pod directories of Pods that no longer exist (left by a previous run). Log dirs are pruned apart. */
  private removeStaleDirs(live: Set<string>): void {
    const podsDir = join(this.o.stateDir, "pods");
    let entries: string[] = [];
    try {
      entries = readdirSync(podsDir);
    } catch {
      return;
    }
    for (const e of entries)
      if (!e.includes("_") && !live.has(e)) rmSync(join(podsDir, e), { recursive: true, force: true });
    this.pruneLogs();
  }

  /** Keeps the logs of the newest `keptLogDirs` Pods that are gone; live Pods' logs always stay. */
  private pruneLogs(): void {
    const podsDir = join(this.o.stateDir, "pods");
    const keep = this.o.keptLogDirs ?? 50;
    let dirs: Array<{ path: string; mtime: number }> = [];
    try {
      dirs = readdirSync(podsDir)
        .filter((e) => e.includes("_") && !this.workers.has(e.slice(e.lastIndexOf("_") + 1)))
        .map((e) => ({ path: join(podsDir, e), mtime: statSync(join(podsDir, e)).mtimeMs }));
    } catch {
      return;
    }
    dirs.sort((a, b) => b.mtime - a.mtime);
    for (const d of dirs.slice(keep)) rmSync(d.path, { recursive: true, force: true });
  }
}
