/**
 * Pod lifecycle: one PodWorker per Pod (by uid) bound to this node, as the kubelet's pod workers.
 * Level-based: every change of the Pod, of a container or a retry timer schedules one sync, and
 * syncs of a Pod never overlap. A sync brings the node in line with the Pod:
 *   - admit it (at most the node's allocatable pods), give it an IP, materialise its volumes and
 *     its resolv.conf/hosts, start a ContainerRunner per container;
 *   - write its status (only when it changed) through the status subresource;
 *   - once it has a deletionTimestamp: stop its containers within the grace period, write the final
 *     status, and delete it with grace 0 and a uid precondition (the kubelet's last word, which lets
 *     the API server remove it).
 * When the Pod is gone from the API server, removed() kills whatever still runs and frees its IP
 * and directories. Logs are kept (the agent prunes old ones).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import type { Logger } from "../../../internal/lib/log.js";
import { type AgentApi, isGone } from "./api.js";
import { ContainerRunner, isExecutableFile, type Prepared } from "./container.js";
import {
  type EnvObjects,
  envReferences,
  expandCommandAndArgs,
  type KeyValues,
  type PodRuntime,
  resolveEnv,
} from "./env.js";
import { type ImageMapping, resolveCommand } from "./image.js";
import type { IpPool } from "./ipam.js";
import {
  apiTime,
  type ConditionJson,
  type ContainerStatusJson,
  type Phase,
  type PodStatusJson,
  podConditions,
  podPhase,
} from "./pod-status.js";
import {
  containerMounts,
  type PodDirs,
  podDirs,
  podHostname,
  prepareVolumes,
  VolumeError,
  writeEtcFiles,
} from "./volumes.js";

/** Environment variable through which the listen shim learns the Pod IP (see listen-shim.mjs). */
export const POD_IP_ENV = "SWITCHBOARD_NODE_AGENT_POD_IP";

const RETRY_MS = 2_000;

export interface PodWorkerDeps {
  api: AgentApi;
  nodeName: string;
  nodeIP: string;
  dnsIP: string;
  clusterDomain: string;
  stateDir: string;
  images: readonly ImageMapping[];
  /** Absolute path of listen-shim.mjs. */
  shimPath: string;
  /** Directories the mapped images' commands run from, kept visible inside every container. */
  imageRoots: readonly string[];
  logBytesMax: number;
  nodeAllocatable: Record<string, string>;
  ips: IpPool;
  /** KUBERNETES_SERVICE_HOST and friends (empty when there is no `kubernetes` Service). */
  serviceEnv(): Promise<Record<string, string>>;
  /** Whether one more Pod may run here (the node's allocatable pods). */
  admit(worker: PodWorker): boolean;
  log: Logger;
}

type Stage = "new" | "rejected" | "preparing" | "running" | "finished";

/** The log directory of a Pod, named as the kubelet names its /var/log/pods/<ns>_<name>_<uid>. */
export function podLogDir(stateDir: string, pod: V1Pod): string {
  const m = pod.metadata;
  return join(stateDir, "pods", `${m?.namespace}_${m?.name}_${m?.uid}`);
}

export class PodWorker {
  readonly uid: string;
  private pod: V1Pod;
  private stage: Stage = "new";
  private readonly dirs: PodDirs;
  private readonly log: Logger;
  private readonly runners = new Map<string, ContainerRunner>();
  private volumePaths = new Map<string, string>();
  private etc: { resolvConf: string; hosts: string } | undefined;
  private podIP: string | undefined;
  private startTime: string | undefined;
  private lastWritten = "";
  private lastConditions: ConditionJson[] | undefined;
  private rejection: { reason: string; message: string } | undefined;
  private lastMountFailure = "";
  private readonly warned = new Set<string>();
  private dirty = false;
  private syncing: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private terminating: Promise<void> | undefined;
  private graceMs = Number.POSITIVE_INFINITY;
  /** removed() or shutdown(): no more syncs, no new processes. */
  private closed = false;

  constructor(
    pod: V1Pod,
    private readonly deps: PodWorkerDeps,
  ) {
    this.pod = pod;
    this.uid = pod.metadata?.uid ?? "";
    this.dirs = podDirs(deps.stateDir, this.uid);
    this.log = deps.log.child({ pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, uid: this.uid });
  }

  get name(): string {
    return `${this.pod.metadata?.namespace}/${this.pod.metadata?.name}`;
  }

  /** Counts against the node's pod capacity: admitted and not finished. */
  get active(): boolean {
    return this.stage === "preparing" || this.stage === "running";
  }

  update(pod: V1Pod): void {
    this.pod = pod;
    // A second delete with a shorter grace period brings the kill forward.
    if (this.terminating && pod.metadata?.deletionTimestamp) {
      const grace = this.deletionGraceMs();
      if (grace < this.graceMs) {
        this.graceMs = grace;
        for (const r of this.runners.values()) void r.stop(grace);
      }
    }
    this.schedule();
  }

  schedule(): void {
    if (this.closed) return;
    this.dirty = true;
    this.syncing ??= this.drain();
  }

  /** The Pod is gone from the API server: kill what still runs (briefly graceful), free IP and dirs. */
  async removed(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    const graceMs = Math.min(this.deletionGraceMs(), 2_000);
    await this.stopAll(graceMs);
    await this.syncing;
    await this.stopAll(0);
    this.deps.ips.release(this.uid);
    rmSync(this.dirs.root, { recursive: true, force: true });
    this.stage = "finished";
  }

  /** The agent stops: stop the processes, leave the Pod and its files (the next agent run adopts it). */
  async shutdown(graceMs: number): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    await this.stopAll(graceMs);
    await this.syncing;
    await this.stopAll(0);
  }

  private async stopAll(graceMs: number): Promise<void> {
    await Promise.all([...this.runners.values()].map((r) => r.stop(graceMs)));
  }

  private retryLater(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.schedule(), RETRY_MS);
  }

  private async drain(): Promise<void> {
    while (this.dirty && !this.closed) {
      this.dirty = false;
      try {
        await this.sync();
      } catch (err) {
        if (this.closed) break;
        this.log.warn("pod sync failed; retrying", { err });
        this.retryLater();
      }
    }
    this.syncing = undefined;
  }

  /** deletionGracePeriodSeconds, else terminationGracePeriodSeconds, else 30 s. */
  private deletionGraceMs(): number {
    const s =
      this.pod.metadata?.deletionGracePeriodSeconds ?? this.pod.spec?.terminationGracePeriodSeconds ?? 30;
    return Math.max(0, s) * 1000;
  }

  private async sync(): Promise<void> {
    const pod = this.pod;
    if (pod.metadata?.deletionTimestamp) return this.terminate();

    if (this.stage === "new") {
      const phase = pod.status?.phase;
      if (phase === "Succeeded" || phase === "Failed") {
        // Finished before this agent saw it (e.g. before a restart): nothing to run.
        this.stage = "finished";
        return;
      }
      if (!this.deps.admit(this)) {
        this.stage = "rejected";
        this.rejection = {
          reason: "OutOfpods",
          message: `Node ${this.deps.nodeName} has no room for another pod (allocatable pods reached)`,
        };
        this.deps.api.event(pod, "Warning", "OutOfpods", this.rejection.message);
        await this.writeStatus();
        return;
      }
      this.podIP = this.allocateIP(pod);
      this.startTime = typeof pod.status?.startTime === "string" ? pod.status.startTime : apiTime();
      this.stage = "preparing";
    }

    if (this.stage === "preparing") {
      try {
        this.volumePaths = await prepareVolumes(pod, this.dirs, this.runtime(), this.deps.api);
        this.etc = writeEtcFiles(this.dirs, pod, this.podIP!, this.deps.dnsIP, this.deps.clusterDomain);
      } catch (err) {
        const message = (err as Error).message;
        if (message !== this.lastMountFailure) {
          this.lastMountFailure = message;
          this.deps.api.event(pod, "Warning", "FailedMount", `MountVolume failed: ${message}`);
          this.log.warn("volumes not ready; retrying", { message, volumeError: err instanceof VolumeError });
        }
        await this.writeStatus();
        this.retryLater();
        return;
      }
      if (this.closed) return;
      const previous = pod.status?.containerStatuses ?? [];
      for (const c of pod.spec?.containers ?? []) {
        const old = previous.find((s) => s.name === c.name);
        // Adopted from a previous agent run, whose process was killed: that counts as a restart.
        const restarts = old ? (old.restartCount ?? 0) + (old.containerID ? 1 : 0) : 0;
        const runner = new ContainerRunner(c, this.containerContext(), restarts);
        this.runners.set(c.name, runner);
        runner.start();
      }
      this.stage = "running";
    }

    if (this.stage === "running" && [...this.runners.values()].every((r) => r.finished)) {
      // Every container exited for good (restartPolicy Never/OnFailure): the Pod is done and its IP free.
      this.stage = "finished";
      this.deps.ips.release(this.uid);
    }
    if (this.stage === "running" || this.stage === "finished") await this.writeStatus();
  }

  private allocateIP(pod: V1Pod): string {
    if (pod.spec?.hostNetwork) return this.deps.nodeIP;
    const held = this.deps.ips.get(this.uid);
    if (held) return held;
    const old = pod.status?.podIP;
    if (old && this.deps.ips.claim(this.uid, old)) return old;
    return this.deps.ips.allocate(this.uid);
  }

  private runtime(): PodRuntime {
    return {
      podIPs: this.podIP ? [this.podIP] : [],
      hostIPs: [this.deps.nodeIP],
      nodeAllocatable: this.deps.nodeAllocatable,
    };
  }

  private containerContext() {
    const pod = this.pod;
    return {
      restartPolicy: pod.spec?.restartPolicy,
      terminationGracePeriodSeconds: pod.spec?.terminationGracePeriodSeconds ?? 30,
      prepare: (c: V1Container) => this.prepare(c),
      onChange: () => this.schedule(),
      event: (type: "Normal" | "Warning", reason: string, message: string) =>
        this.deps.api.event(this.pod, type, reason, message),
      log: this.log,
    };
  }

  /** Everything one start of container `c` needs; re-resolved at every restart, as a kubelet does. */
  private async prepare(c: V1Container): Promise<Prepared> {
    const pod = this.pod;
    const ns = pod.metadata?.namespace ?? "default";
    const refs = envReferences(c);
    const objects: EnvObjects = { configMaps: new Map(), secrets: new Map() };
    for (const name of refs.configMaps) {
      const cm = await this.deps.api.configMap(ns, name);
      if (cm) (objects.configMaps as Map<string, KeyValues>).set(name, cm);
    }
    for (const name of refs.secrets) {
      const s = await this.deps.api.secret(ns, name);
      if (s) (objects.secrets as Map<string, KeyValues>).set(name, s);
    }
    const resolved = resolveEnv(pod, c, objects, this.runtime(), await this.deps.serviceEnv());
    if (!resolved.ok) return { ok: false, reason: "CreateContainerConfigError", message: resolved.message };
    for (const w of resolved.warnings) {
      if (this.warned.has(w)) continue;
      this.warned.add(w);
      this.deps.api.event(pod, "Warning", "InvalidEnvironmentVariableNames", w);
    }
    const expanded = expandCommandAndArgs(c, resolved.env);
    const command = resolveCommand(
      { name: c.name, image: c.image, command: expanded.command, args: expanded.args },
      this.deps.images,
      isExecutableFile,
    );
    if (!command.ok) return command;
    let mounts: ReturnType<typeof containerMounts>;
    try {
      mounts = containerMounts(c, this.volumePaths, this.etc!);
    } catch (err) {
      return { ok: false, reason: "CreateContainerConfigError", message: (err as Error).message };
    }
    const hostname = podHostname(pod);
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      HOME: "/root",
      HOSTNAME: hostname,
      ...resolved.env,
    };
    if (!pod.spec?.hostNetwork) {
      // The stand-in for a network namespace (listen-shim.mjs): Node programs bind the Pod IP.
      env[POD_IP_ENV] = this.podIP!;
      const shim = `--import=${pathToFileURL(this.deps.shimPath).href}`;
      env.NODE_OPTIONS = resolved.env.NODE_OPTIONS ? `${resolved.env.NODE_OPTIONS} ${shim}` : shim;
    }
    return {
      ok: true,
      podIP: this.podIP!,
      env,
      process: {
        argv: command.argv,
        env,
        cwd: c.workingDir || join(this.dirs.root, "containers", c.name),
        hostname,
        mounts,
        keepVisible: this.deps.imageRoots,
        logPath: join(podLogDir(this.deps.stateDir, pod), `${c.name}.log`),
        pidPath: join(this.deps.stateDir, "pids", `${this.uid}_${c.name}.pid`),
        logBytesMax: this.deps.logBytesMax,
        stateDir: this.deps.stateDir,
      },
    };
  }

  /** Stops the containers within the grace period, writes the final status, deletes the Pod. */
  private terminate(): Promise<void> {
    this.terminating ??= (async () => {
      clearTimeout(this.retryTimer);
      this.graceMs = this.deletionGraceMs();
      this.log.info("pod deleted; stopping its containers", { graceMs: this.graceMs });
      // preStop hooks are not run (see README).
      await this.stopAll(this.graceMs);
      this.deps.ips.release(this.uid);
      if (this.runners.size > 0 && !this.closed) await this.writeStatus(true);
      const m = this.pod.metadata;
      if (!this.closed) await this.deps.api.deletePod(m?.namespace ?? "default", m?.name ?? "", this.uid);
      this.stage = "finished";
    })().catch((err: unknown) => {
      // Let the next sync try again (the containers are already stopped then).
      this.terminating = undefined;
      throw err;
    });
    return this.terminating;
  }

  private containerStatuses(): ContainerStatusJson[] {
    const previous = this.pod.status?.containerStatuses ?? [];
    return (this.pod.spec?.containers ?? []).map((c) => {
      const runner = this.runners.get(c.name);
      if (runner) return runner.status();
      const old = previous.find((s) => s.name === c.name);
      const reason = this.rejection ? this.rejection.reason : "ContainerCreating";
      return {
        name: c.name,
        image: c.image ?? "",
        imageID: "",
        ready: false,
        started: false,
        restartCount: old?.restartCount ?? 0,
        state: { waiting: { reason } },
        lastState: {},
      };
    });
  }

  /** Writes the status when it differs from what this worker wrote last. */
  private async writeStatus(final = false): Promise<void> {
    const pod = this.pod;
    const statuses = this.containerStatuses();
    let phase: Phase = podPhase(pod.spec?.restartPolicy, statuses);
    if (this.rejection) phase = "Failed";
    // Containers stopped for the Pod's deletion: the Pod ends (Failed unless every one succeeded).
    if (final)
      phase = statuses.every((s) => "terminated" in s.state && s.state.terminated.exitCode === 0)
        ? "Succeeded"
        : "Failed";
    const terminal = phase === "Succeeded" || phase === "Failed";
    const existing = pod.status?.conditions ?? [];
    const gates = (pod.spec?.readinessGates ?? []).map((g) => g.conditionType);
    const gatesReady = gates.every((g) => existing.find((c) => c.type === g)?.status === "True");
    const conditions = podConditions(
      statuses,
      (this.lastConditions ?? existing) as Array<{
        type?: string;
        status?: string;
        lastTransitionTime?: unknown;
      }>,
      gatesReady,
      apiTime(),
      terminal,
    );
    const status: PodStatusJson = { phase, conditions, containerStatuses: statuses };
    if (this.rejection) {
      status.reason = this.rejection.reason;
      status.message = this.rejection.message;
    }
    status.hostIP = this.deps.nodeIP;
    status.hostIPs = [{ ip: this.deps.nodeIP }];
    if (this.podIP) {
      status.podIP = this.podIP;
      status.podIPs = [{ ip: this.podIP }];
    }
    if (this.startTime) status.startTime = this.startTime;
    const json = JSON.stringify(status);
    if (json === this.lastWritten) return;
    const m = pod.metadata;
    try {
      await this.deps.api.patchPodStatus(m?.namespace ?? "default", m?.name ?? "", this.uid, status);
    } catch (err) {
      if (isGone(err)) return; // deleted (or replaced by a namesake) meanwhile: removed() follows
      throw err;
    }
    this.lastWritten = json;
    this.lastConditions = conditions;
  }
}
