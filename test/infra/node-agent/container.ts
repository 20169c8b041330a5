/**
 * One container of a Pod, over its lifetime: (re)start its process, run its probes, restart it
 * after it exits as the Pod's restartPolicy says (with back-off), and report its containerStatus.
 * The Pod worker owns the runners; a runner owns its current process and probe workers, and
 * releases them in stop().
 */
import { statSync } from "node:fs";
import type { V1Container, V1Probe } from "@kubernetes/client-node";
import type { Logger } from "../../../internal/lib/log.js";
import { sleep } from "../../../operator/runtime/sleep.js";
import {
  apiTime,
  type ContainerStateJson,
  type ContainerStatusJson,
  type TerminatedState,
} from "./pod-status.js";
import { type ProbeKind, type ProbeTarget, ProbeWorker } from "./probes.js";
import { ContainerProcess, type ProcessSpec } from "./supervisor.js";

export const BACKOFF_INITIAL_MS = 1_000;
export const BACKOFF_MAX_MS = 30_000;
/** A container that ran this long before exiting starts its back-off over. */
export const BACKOFF_RESET_AFTER_MS = 10_000;

/** The delay before the next restart: 1 s, doubling up to 30 s; 1 s again after a run of 10 s or more. */
export function nextBackoffMs(previousMs: number | undefined, ranMs: number): number {
  if (previousMs === undefined || ranMs >= BACKOFF_RESET_AFTER_MS) return BACKOFF_INITIAL_MS;
  return Math.min(BACKOFF_MAX_MS, previousMs * 2);
}

/** Whether a container that exited with `exitCode` is started again under `restartPolicy`. */
export function shouldRestart(restartPolicy: string | undefined, exitCode: number): boolean {
  const policy = restartPolicy ?? "Always";
  return policy === "Always" || (policy === "OnFailure" && exitCode !== 0);
}

/** True when `path` is an executable regular file (what a container's `command` must name). */
export function isExecutableFile(path: string): boolean {
  try {
    const st = statSync(path);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** What starting the container needs, or why it cannot start yet (a waiting reason and message). */
export type Prepared =
  | { ok: true; process: ProcessSpec; podIP: string; env: Record<string, string> }
  | { ok: false; reason: string; message: string };

export interface ContainerContext {
  restartPolicy: string | undefined;
  /** Grace of a kill after a failed liveness/startup probe: the probe's, else the Pod's. */
  terminationGracePeriodSeconds: number;
  /** Resolves env, argv and mounts for one start (re-done at every restart, as a kubelet does). */
  prepare(spec: V1Container): Promise<Prepared>;
  /** Something in status() changed. */
  onChange(): void;
  event(type: "Normal" | "Warning", reason: string, message: string): void;
  log: Logger;
}

export class ContainerRunner {
  private state: ContainerStateJson = { waiting: { reason: "ContainerCreating" } };
  private lastState: { terminated?: TerminatedState } = {};
  private restartCount: number;
  private containerID: string | undefined;
  private started = false;
  private ready = false;
  private proc: ContainerProcess | undefined;
  private probes: ProbeWorker[] = [];
  private backoffMs: number | undefined;
  private runs = 0;
  private lastFailure = "";
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  /** Exited and will not be restarted (restart policy), or stopped. */
  private done = false;

  constructor(
    readonly spec: V1Container,
    private readonly ctx: ContainerContext,
    /** Restarts already counted by a previous agent run (from the Pod's status). */
    initialRestartCount = 0,
  ) {
    this.restartCount = initialRestartCount;
  }

  start(): void {
    this.loop ??= this.run();
  }

  get finished(): boolean {
    return this.done;
  }

  /**
   * Stops restarting and stops the process: SIGTERM to its group, SIGKILL after `graceMs`. A second
   * call with a shorter grace brings the SIGKILL forward. Resolves when the process has exited.
   */
  async stop(graceMs: number): Promise<void> {
    this.abort.abort();
    this.stopProbes();
    const proc = this.proc;
    if (proc?.running) {
      this.ctx.event("Normal", "Killing", `Stopping container ${this.spec.name}`);
      await proc.stop(graceMs);
    }
    await this.loop;
    this.done = true;
  }

  status(): ContainerStatusJson {
    const s: ContainerStatusJson = {
      name: this.spec.name,
      image: this.spec.image ?? "",
      imageID: `agent://${this.spec.image ?? ""}`,
      ready: this.ready,
      started: this.started,
      restartCount: this.restartCount,
      state: this.state,
      lastState: this.lastState,
    };
    if (this.containerID) s.containerID = this.containerID;
    return s;
  }

  private setState(state: ContainerStateJson): void {
    this.state = state;
    this.ctx.onChange();
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      let prepared: Prepared;
      try {
        prepared = await this.ctx.prepare(this.spec);
      } catch (err) {
        prepared = { ok: false, reason: "CreateContainerConfigError", message: (err as Error).message };
      }
      if (signal.aborted) break;
      if (!prepared.ok) {
        await this.waitAfterFailure(prepared.reason, prepared.message, signal);
        continue;
      }
      let proc: ContainerProcess;
      try {
        proc = new ContainerProcess(prepared.process, this.ctx.log);
      } catch (err) {
        await this.waitAfterFailure("RunContainerError", (err as Error).message, signal);
        continue;
      }
      this.lastFailure = "";
      if (this.runs > 0) this.restartCount++;
      this.runs++;
      this.proc = proc;
      this.containerID = `agent://${proc.pid}`;
      const startedAt = apiTime(proc.startedAt);
      this.started = !this.spec.startupProbe;
      this.ready = this.started && !this.spec.readinessProbe;
      this.ctx.event("Normal", "Started", `Started container ${this.spec.name} (pid ${proc.pid})`);
      this.setState({ running: { startedAt } });
      this.startProbes(
        { podIP: prepared.podIP, container: this.spec, pid: proc.pid, env: prepared.env },
        "startup",
      );

      const exit = await proc.exited;
      this.stopProbes();
      this.started = false;
      this.ready = false;
      const terminated: TerminatedState = {
        exitCode: exit.exitCode,
        reason: exit.exitCode === 0 ? "Completed" : "Error",
        startedAt,
        finishedAt: apiTime(exit.finishedAt),
        containerID: this.containerID,
      };
      if (exit.signal !== undefined) terminated.signal = exit.signal;
      this.ctx.log.info("container exited", { container: this.spec.name, pid: proc.pid, ...terminated });
      if (signal.aborted || !shouldRestart(this.ctx.restartPolicy, exit.exitCode)) {
        this.done = true;
        this.setState({ terminated });
        break;
      }
      const ranMs = exit.finishedAt.getTime() - proc.startedAt.getTime();
      this.backoffMs = nextBackoffMs(this.backoffMs, ranMs);
      this.lastState = { terminated };
      const message = `back-off ${this.backoffMs / 1000}s restarting failed container=${this.spec.name}`;
      this.ctx.event("Warning", "BackOff", message);
      this.setState({ waiting: { reason: "CrashLoopBackOff", message } });
      await sleep(this.backoffMs, signal);
    }
    this.done = true;
  }

  /** Reports why the container cannot start, then waits (with back-off) before trying again. */
  private async waitAfterFailure(reason: string, message: string, signal: AbortSignal): Promise<void> {
    if (message !== this.lastFailure) {
      this.lastFailure = message;
      this.ctx.event("Warning", "Failed", `Error: ${message}`);
      this.ctx.log.warn("container cannot start", { container: this.spec.name, reason, message });
    }
    this.setState({ waiting: { reason, message } });
    this.backoffMs = nextBackoffMs(this.backoffMs, 0);
    await sleep(this.backoffMs, signal);
  }

  /** Starts the startup probe, or (without one, or once it passed) the readiness and liveness probes. */
  private startProbes(target: ProbeTarget, phase: "startup" | "main"): void {
    const add = (kind: ProbeKind, probe: V1Probe | undefined) => {
      if (!probe) return;
      const worker = new ProbeWorker(
        kind,
        probe,
        target,
        (healthy, message) => this.onProbe(kind, probe, target, healthy, message),
        (message) =>
          this.ctx.event(
            "Warning",
            "Unhealthy",
            `${kind[0]!.toUpperCase()}${kind.slice(1)} probe failed: ${message}`,
          ),
      );
      this.probes.push(worker);
      worker.start();
    };
    if (phase === "startup" && this.spec.startupProbe) return add("startup", this.spec.startupProbe);
    add("readiness", this.spec.readinessProbe);
    add("liveness", this.spec.livenessProbe);
  }

  private stopProbes(): void {
    for (const p of this.probes) p.stop();
    this.probes = [];
  }

  private onProbe(
    kind: ProbeKind,
    probe: V1Probe,
    target: ProbeTarget,
    healthy: boolean,
    message: string | undefined,
  ): void {
    const proc = this.proc;
    // A late result of a process that is gone, or of a container being stopped, changes nothing.
    if (!proc?.running || proc.pid !== target.pid || this.abort.signal.aborted) return;
    if (kind === "readiness") {
      this.ready = healthy && this.started;
      this.ctx.onChange();
      return;
    }
    if (healthy) {
      if (kind === "startup" && !this.started) {
        // Started: from now on readiness and liveness are probed, as in the kubelet.
        this.started = true;
        this.ready = !this.spec.readinessProbe;
        this.stopProbes();
        this.startProbes(target, "main");
        this.ctx.onChange();
      }
      return;
    }
    const grace = probe.terminationGracePeriodSeconds ?? this.ctx.terminationGracePeriodSeconds;
    this.ctx.event(
      "Normal",
      "Killing",
      `Container ${this.spec.name} failed ${kind} probe${message ? ` (${message})` : ""}, will be restarted`,
    );
    void proc.stop(grace * 1000);
  }
}
