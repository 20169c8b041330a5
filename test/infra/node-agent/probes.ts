/**
 * Probes: one ProbeWorker per probe of a running container, as the kubelet's prober workers.
 * It waits initialDelaySeconds, then checks every periodSeconds (each check bounded by
 * timeoutSeconds) and reports a result only when it flips: after successThreshold consecutive
 * successes or failureThreshold consecutive failures. What a result means (Ready, restart) is
 * the container's business, not the prober's.
 */
import { spawn } from "node:child_process";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import type { V1Container, V1Probe } from "@kubernetes/client-node";

export type ProbeKind = "startup" | "readiness" | "liveness";

export interface ProbeTarget {
  /** The Pod IP: the default host of httpGet and tcpSocket probes. */
  podIP: string;
  container: Pick<V1Container, "name" | "ports">;
  /** The container's main pid (exec probes run in its mount namespace) and environment. */
  pid: number;
  env: Record<string, string>;
}

export interface CheckResult {
  ok: boolean;
  /** Why it failed, for the Unhealthy event. */
  message?: string;
}

/** A port by number, numeric string, or the name of one of the container's ports. */
export function resolvePort(port: number | string | undefined, container: ProbeTarget["container"]): number {
  if (typeof port === "number") return port;
  if (port === undefined) throw new Error("probe without a port");
  if (/^\d+$/.test(port)) return Number(port);
  const named = container.ports?.find((p) => p.name === port);
  if (!named) throw new Error(`container ${container.name} has no port named ${JSON.stringify(port)}`);
  return named.containerPort;
}

/** Runs one check of `probe` against `target`, giving up after `timeoutMs`. Never rejects. */
export async function check(probe: V1Probe, target: ProbeTarget, timeoutMs: number): Promise<CheckResult> {
  try {
    if (probe.httpGet) return await httpCheck(probe, target, timeoutMs);
    if (probe.tcpSocket) return await tcpCheck(probe, target, timeoutMs);
    if (probe.exec) return await execCheck(probe, target, timeoutMs);
    return { ok: false, message: "unsupported probe (only httpGet, tcpSocket and exec are)" };
  } catch (err) {
    return { ok: false, message: err instanceof Error ? err.message : String(err) };
  }
}

function httpCheck(probe: V1Probe, target: ProbeTarget, timeoutMs: number): Promise<CheckResult> {
  const get = probe.httpGet!;
  const port = resolvePort(get.port, target.container);
  const host = get.host || target.podIP;
  const https = (get.scheme ?? "HTTP").toUpperCase() === "HTTPS";
  const headers: Record<string, string> = {
    "User-Agent": "kube-probe/switchboard-node-agent",
    Accept: "*/*",
  };
  for (const h of get.httpHeaders ?? []) headers[h.name] = h.value;
  const path = get.path ? (get.path.startsWith("/") ? get.path : `/${get.path}`) : "/";
  return new Promise<CheckResult>((resolve) => {
    const options = { host, port, path, method: "GET", headers, timeout: timeoutMs };
    const onResponse = (res: import("node:http").IncomingMessage) => {
      res.resume();
      const code = res.statusCode ?? 0;
      // As the kubelet: 2xx and 3xx are success.
      resolve(
        code >= 200 && code < 400
          ? { ok: true }
          : { ok: false, message: `HTTP probe failed with statuscode: ${code}` },
      );
    };
    const req = https
      ? httpsRequest({ ...options, rejectUnauthorized: false }, onResponse)
      : httpRequest(options, onResponse);
    req.on("timeout", () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on("error", (err) => resolve({ ok: false, message: `Get ${host}:${port}${path}: ${err.message}` }));
    req.end();
  });
}

function tcpCheck(probe: V1Probe, target: ProbeTarget, timeoutMs: number): Promise<CheckResult> {
  const port = resolvePort(probe.tcpSocket!.port, target.container);
  const host = probe.tcpSocket!.host || target.podIP;
  return new Promise<CheckResult>((resolve) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => socket.destroy(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs);
    socket.on("connect", () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: true });
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      resolve({ ok: false, message: `dial tcp ${host}:${port}: ${err.message}` });
    });
  });
}

/** exec probes run in the container's mount namespace (nsenter), with its environment. */
function execCheck(probe: V1Probe, target: ProbeTarget, timeoutMs: number): Promise<CheckResult> {
  const command = probe.exec!.command ?? [];
  if (command.length === 0) return Promise.resolve({ ok: false, message: "exec probe without a command" });
  return new Promise<CheckResult>((resolve) => {
    const child = spawn("nsenter", ["--target", String(target.pid), "--mount", "--uts", "--", ...command], {
      env: target.env,
      stdio: "ignore",
      detached: true,
    });
    const timer = setTimeout(() => {
      try {
        if (child.pid) process.kill(-child.pid, "SIGKILL");
      } catch {
        // gone
      }
      resolve({ ok: false, message: `command timed out after ${timeoutMs} ms` });
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve({ ok: false, message: err.message });
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code === 0 ? { ok: true } : { ok: false, message: `command exited with code ${code}` });
    });
  });
}

export interface ProbeSettings {
  initialDelayMs: number;
  periodMs: number;
  timeoutMs: number;
  successThreshold: number;
  failureThreshold: number;
}

/** The API's defaults (period 10 s, timeout 1 s, thresholds 1 and 3); liveness and startup need 1 success. */
export function probeSettings(probe: V1Probe, kind: ProbeKind): ProbeSettings {
  return {
    initialDelayMs: (probe.initialDelaySeconds ?? 0) * 1000,
    periodMs: Math.max(1, probe.periodSeconds ?? 10) * 1000,
    timeoutMs: Math.max(1, probe.timeoutSeconds ?? 1) * 1000,
    successThreshold: kind === "readiness" ? Math.max(1, probe.successThreshold ?? 1) : 1,
    failureThreshold: Math.max(1, probe.failureThreshold ?? 3),
  };
}

/**
 * Turns a stream of check results into flips of the probe's state: reports `true` after
 * successThreshold successes in a row and `false` after failureThreshold failures in a row, each
 * only when it changes the state. Pure, unit-tested.
 */
export class ProbeState {
  private successes = 0;
  private failures = 0;

  constructor(
    private readonly settings: Pick<ProbeSettings, "successThreshold" | "failureThreshold">,
    /** undefined until the first flip: the container reads it per kind (not ready, alive, not started). */
    private current: boolean | undefined = undefined,
  ) {}

  get healthy(): boolean | undefined {
    return this.current;
  }

  /** The new state when this result flips it, else undefined. */
  record(ok: boolean): boolean | undefined {
    if (ok) {
      this.failures = 0;
      this.successes++;
    } else {
      this.successes = 0;
      this.failures++;
    }
    let next: boolean | undefined;
    if (ok && this.successes >= this.settings.successThreshold) next = true;
    else if (!ok && this.failures >= this.settings.failureThreshold) next = false;
    if (next === undefined || next === this.current) return undefined;
    this.current = next;
    return next;
  }
}

/** Runs one probe of one running container until stopped. */
export class ProbeWorker {
  private readonly settings: ProbeSettings;
  private readonly state: ProbeState;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    readonly kind: ProbeKind,
    private readonly probe: V1Probe,
    private readonly target: ProbeTarget,
    /** Called when the probe's state flips; `message` is the last failure's. */
    private readonly onFlip: (healthy: boolean, message: string | undefined) => void,
    /** Called on every failed check (for Unhealthy events). */
    private readonly onFailure: (message: string) => void = () => undefined,
  ) {
    this.settings = probeSettings(probe, kind);
    this.state = new ProbeState(this.settings);
  }

  start(): void {
    this.timer = setTimeout(() => void this.tick(), this.settings.initialDelayMs);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const result = await check(this.probe, this.target, this.settings.timeoutMs);
    if (this.stopped) return;
    if (!result.ok) this.onFailure(result.message ?? "failed");
    const flipped = this.state.record(result.ok);
    if (flipped !== undefined) this.onFlip(flipped, result.message);
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), this.settings.periodMs);
  }
}
