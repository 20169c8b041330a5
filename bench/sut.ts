/**
 * The system under test, whatever its shape, behind one interface the ladder drives: where each
 * pair's sender and receiver connect, how their tokens are made, the CPU of the system's own
 * processes, their /metrics, whether they still run, and how they stop.
 *
 *   - ProcessSystem (here): one server process: `switchboard start` on the embedded backend, or with
 *     `--backend distributed` on the Kafka and Cassandra of test/infra, or the bare-ws baseline.
 *   - ClusterSystem (cluster-system.ts): the multi-process cluster of test/infra/cluster.
 *
 * backend.ts decides which one a run starts (`--backend`).
 */
import { mintTokens } from "./client.js";
import type { InfraCpu } from "./infra.js";
import type { PeerProtocol } from "./loadgen.js";
import type { ServerSettings } from "./options.js";
import { ServerProcess, type StartOptions } from "./server.js";

/** Limits raised so the gateway's per-connection and per-user rate limits never shape the load. */
export const SERVER_ENV: Record<string, string> = {
  SWITCHBOARD_GATEWAY_SENDS_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_SEND_BURST: "1000000",
  SWITCHBOARD_GATEWAY_USER_SENDS_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_FRAMES_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_CONNECTIONS_MAX: "19500",
};

/** Warnings and errors a process logged during the run. */
export interface LogDigest {
  warn: number;
  error: number;
  /** Lines that are not the server's JSON records (a crash's stack trace, a Node warning). */
  other: number;
  /** The most frequent messages, "level: msg (error message)" → how many, first and last seen (ISO time). */
  top: Record<string, { count: number; first: string; last: string }>;
}

export interface StopReport {
  /** Non-zero exits and the like, one line each. */
  problems: string[];
  /** Cluster: the warnings and errors in each process's log, by process name. */
  logs?: Record<string, LogDigest>;
}

export interface SystemUnderTest {
  /** One progress line: what runs where. */
  readonly description: string;
  /** Where each pair's sender connects. */
  readonly senderUrl: string;
  /** Where each pair's receiver connects. */
  readonly receiverUrl: string;
  /** The bare server takes the user from the URL (?u=) and wants no token. */
  readonly userInUrl: boolean;
  /** A peer's client protocol (the comparisons); undefined: Switchboard's. */
  readonly protocol?: PeerProtocol | undefined;
  /** The Kafka and Cassandra JVMs the system runs on, accounted apart from foreign load. */
  readonly infra: InfraCpu | undefined;
  /** The pid `perf record` follows: single-process systems only. */
  readonly perfPid: number | undefined;
  tokens(users: string[]): Promise<string[]>;
  /** CPU seconds of each of the system's own processes, by name ("server" when there is one). */
  serverCpuSeconds(): Record<string, number>;
  /**
   * Every sample of each named /metrics series, summed over the system's processes; undefined when
   * the system has no /metrics (bare) or it could not be read.
   */
  metrics(names: string[]): Promise<Record<string, number> | undefined>;
  /** VmRSS of each process in kB, by name as in serverCpuSeconds. */
  rssKb(): Record<string, number>;
  /** Throws, with the tail of its log, if a process of the system has exited. */
  checkRunning(): void;
  /** Stops every process (gracefully, then by force) and removes its data unless kept. */
  stop(): Promise<StopReport>;
  /** What the summary records about the running system (cluster: processes, ports, names). */
  describe(): Record<string, unknown>;
  /**
   * Single-process systems: kill -9 the server, start it again at once on the same data dir and port,
   * and return when it answers /readyz, with the times of each stage.
   */
  crashAndRestart?(): Promise<RestartTimes>;
}

/** Milliseconds since the epoch of each stage of a crash and restart. */
export interface RestartTimes {
  killedAt: number;
  /** The new process was spawned. */
  spawnedAt: number;
  /** It printed its start line (storage open, consumer groups joined, listening). */
  startedAt: number;
  /** /readyz answered 200. */
  readyAt: number;
}

/** Sums, over the system's processes, of the CPU seconds serverCpuSeconds() reports. */
export function totalCpuSeconds(sut: SystemUnderTest): number {
  let s = 0;
  for (const v of Object.values(sut.serverCpuSeconds())) s += v;
  return s + (sut.infra?.total() ?? 0);
}

/** One server process (switchboard on either backend, or the bare-ws baseline). */
export class ProcessSystem implements SystemUnderTest {
  readonly senderUrl: string;
  readonly receiverUrl: string;
  readonly userInUrl: boolean;
  readonly description: string;

  private constructor(
    private serverProcess: ServerProcess,
    readonly infra: InfraCpu | undefined,
    private readonly startOptions: StartOptions,
  ) {
    const server = serverProcess;
    this.senderUrl = this.receiverUrl = `ws://127.0.0.1:${server.port}/ws`;
    this.userInUrl = server.kind === "bare";
    this.description = `${server.kind} server pid ${server.pid} on port ${server.port} (data ${server.dataDir})`;
  }

  static async start(
    kind: "switchboard" | "bare",
    s: ServerSettings,
    o: { env?: Record<string, string>; args?: string[]; nodeArgs?: string[]; infra?: InfraCpu },
  ): Promise<ProcessSystem> {
    const options: StartOptions = {
      kind,
      cpus: s.serverCpus,
      env: { ...SERVER_ENV, ...s.env, ...o.env },
      ...(o.args ? { args: o.args, startTimeoutMs: 180_000 } : {}),
      nodeArgs: o.nodeArgs ?? [],
      keepData: s.keepData,
      nice: s.nice,
      realtime: s.realtime,
      dataRoot: s.dataRoot,
    };
    return new ProcessSystem(await ServerProcess.start(options), o.infra, options);
  }

  get server(): ServerProcess {
    return this.serverProcess;
  }

  async crashAndRestart(): Promise<RestartTimes> {
    const old = this.serverProcess;
    const killedAt = Date.now();
    await old.crash();
    const spawnedAt = Date.now();
    this.serverProcess = await ServerProcess.start({
      ...this.startOptions,
      dataDir: old.dataDir,
      port: old.port,
    });
    const startedAt = Date.now();
    const readyz = `http://127.0.0.1:${old.port}/readyz`;
    for (;;) {
      const status = await fetch(readyz).then(
        (r) => r.status,
        () => 0,
      );
      if (status === 200) break;
      if (Date.now() - spawnedAt > 120_000)
        throw new Error(`restarted server not ready within 120 s: ${readyz}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return { killedAt, spawnedAt, startedAt, readyAt: Date.now() };
  }

  get perfPid(): number {
    return this.server.pid;
  }

  tokens(users: string[]): Promise<string[]> {
    return this.userInUrl ? Promise.resolve(users.map(() => "x")) : mintTokens(this.server.dataDir, users);
  }

  serverCpuSeconds(): Record<string, number> {
    return { server: this.server.cpuSeconds() };
  }

  async metrics(names: string[]): Promise<Record<string, number> | undefined> {
    if (this.server.kind === "bare") return undefined;
    try {
      return await this.server.metrics(names);
    } catch {
      return undefined;
    }
  }

  rssKb(): Record<string, number> {
    return { server: this.server.rssKb() };
  }

  checkRunning(): void {
    if (!this.server.running) throw new Error(`server exited: ${this.server.tail()}`);
  }

  async stop(): Promise<StopReport> {
    const code = await this.server.stop();
    return { problems: code !== 0 && code !== null ? [`${this.server.kind} server exit code ${code}`] : [] };
  }

  describe(): Record<string, unknown> {
    return { pid: this.server.pid, port: this.server.port };
  }
}
