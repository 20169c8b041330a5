/**
 * A multi-process Switchboard on loopback, without Kubernetes: every role its own
 * `switchboard start --role X` process on the real Kafka and Cassandra of test/infra, wired through
 * the same `cluster.*` gRPC targets the operator sets in a cluster. Used by `test/infra/up.sh cluster`
 * (detached processes that outlive the script, stopped by down.sh), by tests (which kill, stop and
 * restart single processes, like nats.js's test harness does with servers) and by the bench.
 *
 * State lives in `<runDir>/state.json` (ports, pids, topic prefix, keyspace); each process logs to
 * `<runDir>/<name>.log`. A process is recognised as ours by its command line naming the run dir.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { newKey } from "../../../internal/grpc-auth/key-file.js";
import { PERMISSIONS, type Principal } from "../../../internal/grpc-auth/policy.js";
import { signDevToken } from "../../../internal/lib/auth.js";

export type ClusterRole = "gateway" | "router" | "presence" | "push" | "id" | "sequencer";

export interface ClusterLayout {
  gateway: number;
  router: number;
  presence: number;
  push: number;
  id: number;
  sequencer: number;
}

/** What the issue asks of `up.sh cluster`: 2 gateways, 2 routers, and one of every other role. */
export const DEFAULT_LAYOUT: ClusterLayout = {
  gateway: 2,
  router: 2,
  presence: 1,
  push: 1,
  id: 1,
  sequencer: 1,
};

export interface ClusterProcess {
  /** e.g. "gateway-1" */
  name: string;
  role: ClusterRole;
  index: number;
  httpPort: number;
  grpcPort: number;
  pid: number;
}

export interface ClusterState {
  runDir: string;
  kafkaBrokers: string;
  cassandraContactPoints: string;
  cassandraDatacenter: string;
  topicPrefix: string;
  keyspace: string;
  /** Data dir whose dev secret every gateway accepts (`switchboard token --data-dir`). */
  tokenDataDir: string;
  processes: ClusterProcess[];
}

export interface ClusterOptions {
  runDir: string;
  kafkaBrokers: string;
  cassandraContactPoints: string;
  cassandraDatacenter?: string;
  /** First port; process k uses basePort + 2k (HTTP) and basePort + 2k + 1 (gRPC). */
  basePort: number;
  layout?: ClusterLayout;
  /** Extra SWITCHBOARD_* settings for every process. */
  env?: Record<string, string>;
  /** Extra settings for one process (over `env`), e.g. a gateway's advertised address. */
  envOf?: (p: ClusterProcess) => Record<string, string>;
  readyTimeoutMs?: number;
}

/** The repository root: from the source (test/infra/cluster) or the build (dist/test/infra/cluster). */
function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) || dir.endsWith("/dist")) {
    const up = resolve(dir, "..");
    if (up === dir) throw new Error("cluster harness: no package.json above this file");
    dir = up;
  }
  return dir;
}
const repoRoot = findRepoRoot();
const cliPath = join(repoRoot, "dist/cmd/switchboard.js");
/** Start order: what others call first, the gateways (which clients reach) last. */
const ROLE_ORDER: ClusterRole[] = ["id", "push", "presence", "sequencer", "router", "gateway"];

const targets = (ps: ClusterProcess[], role: ClusterRole) =>
  ps.filter((p) => p.role === role).map((p) => `127.0.0.1:${p.grpcPort}`);

/** The environment of one process: the shared settings, its ports, and its identity in its role. */
function processEnv(
  state: ClusterState,
  p: ClusterProcess,
  extra: Record<string, string>,
): NodeJS.ProcessEnv {
  const ps = state.processes;
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    SWITCHBOARD_LOG_LEVEL: process.env.SWITCHBOARD_LOG_LEVEL ?? "info",
    SWITCHBOARD_BACKEND: "distributed",
    SWITCHBOARD_KAFKA_BROKERS: state.kafkaBrokers,
    SWITCHBOARD_KAFKA_TOPIC_PREFIX: state.topicPrefix,
    SWITCHBOARD_CASSANDRA_CONTACT_POINTS: state.cassandraContactPoints,
    SWITCHBOARD_CASSANDRA_DATACENTER: state.cassandraDatacenter,
    SWITCHBOARD_CASSANDRA_KEYSPACE: state.keyspace,
    SWITCHBOARD_HTTP_HOST: "127.0.0.1",
    SWITCHBOARD_HTTP_PORT: String(p.httpPort),
    SWITCHBOARD_GRPC_PORT: String(p.grpcPort),
    // ipv4:a,b lists every replica, like a headless Service's DNS answer does in Kubernetes.
    SWITCHBOARD_CLUSTER_ID_TARGET: `ipv4:${targets(ps, "id").join(",")}`,
    SWITCHBOARD_CLUSTER_ROUTER_TARGET: `ipv4:${targets(ps, "router").join(",")}`,
    SWITCHBOARD_CLUSTER_PUSH_TARGET: `ipv4:${targets(ps, "push").join(",")}`,
    SWITCHBOARD_CLUSTER_PRESENCE_TARGETS: targets(ps, "presence").join(","),
    ...(p.role === "gateway" ? { SWITCHBOARD_GATEWAY_ID: p.name } : {}),
    ...(p.role === "id" ? { SWITCHBOARD_ID_WORKER_ID: String(p.index) } : {}),
    ...(p.role === "presence" ? { SWITCHBOARD_CLUSTER_PRESENCE_SHARD: String(p.index) } : {}),
    // Every gRPC call between the processes is authenticated and authorized (docs/adr/0007).
    SWITCHBOARD_GRPC_KEY_FILE: join(state.runDir, "grpc", "keys"),
    SWITCHBOARD_GRPC_CREDENTIAL_FILE: join(state.runDir, "grpc", `${p.role}.key`),
    SWITCHBOARD_GRPC_CLIENTS: `probe=${PERMISSIONS.join("+")}`,
    ...extra,
  };
}

/**
 * The cluster's gRPC credentials: a key per role (each process sends its role's) and one for tests'
 * own calls (`client:probe`, every permission), with the key file that admits them all.
 */
function writeGrpcKeys(runDir: string): void {
  const dir = join(runDir, "grpc");
  mkdirSync(dir, { recursive: true });
  const lines: string[] = [];
  for (const [file, principal] of [
    ...ROLE_ORDER.map((r) => [r, `role:${r}`] as const),
    ["probe", "client:probe"] as const,
  ]) {
    const { key, line } = newKey(principal as Principal);
    writeFileSync(join(dir, `${file}.key`), `${key}\n`, { mode: 0o600 });
    lines.push(line);
  }
  writeFileSync(join(dir, "keys"), `${lines.join("\n")}\n`, { mode: 0o600 });
}

/** The first port of the kernel's ephemeral range (the source ports of outgoing connections). */
function ephemeralPortsFrom(): number {
  try {
    const first = Number(
      readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0],
    );
    if (Number.isInteger(first) && first > 0) return first;
  } catch {
    // Not Linux: the IANA dynamic range starts at 49152; Linux's default at 32768.
  }
  return 32_768;
}

/**
 * A base port with the next `count` ports free on 127.0.0.1 (the cluster takes fixed ports).
 * The range lies below the kernel's ephemeral ports: a killed process is restarted on its ports, and
 * one of them taken meanwhile as the source port of some outgoing connection (a router re-dialling
 * a gateway) would fail the restart with EADDRINUSE.
 */
export async function freePortRange(count: number): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
  const low = 20_000;
  const high = Math.min(ephemeralPortsFrom(), 65_536) - count;
  if (high <= low) throw new Error(`no room for ${count} ports between ${low} and the ephemeral range`);
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = low + Math.floor(Math.random() * (high - low));
    let ok = true;
    for (let p = base; p < base + count && ok; p++) ok = await free(p);
    if (ok) return base;
  }
  throw new Error(`no ${count} free consecutive ports on 127.0.0.1`);
}

export class LocalCluster {
  private constructor(
    readonly state: ClusterState,
    private readonly extraEnv: Record<string, string>,
    private readonly envOf: (p: ClusterProcess) => Record<string, string> = () => ({}),
  ) {}

  /** Provisions topics and schema under a fresh prefix and keyspace, starts every process, waits until all are ready. */
  static async start(o: ClusterOptions): Promise<LocalCluster> {
    mkdirSync(o.runDir, { recursive: true });
    const layout = o.layout ?? DEFAULT_LAYOUT;
    const stamp = `${Date.now().toString(36)}${process.pid.toString(36)}`;
    const processes: ClusterProcess[] = [];
    for (const role of ROLE_ORDER) {
      for (let index = 0; index < layout[role]; index++) {
        const k = processes.length;
        processes.push({
          name: `${role}-${index}`,
          role,
          index,
          httpPort: o.basePort + 2 * k,
          grpcPort: o.basePort + 2 * k + 1,
          pid: 0,
        });
      }
    }
    const state: ClusterState = {
      runDir: o.runDir,
      kafkaBrokers: o.kafkaBrokers,
      cassandraContactPoints: o.cassandraContactPoints,
      cassandraDatacenter: o.cassandraDatacenter ?? "datacenter1",
      topicPrefix: `sbc${stamp}.`,
      keyspace: `sbc_${stamp}`,
      tokenDataDir: join(o.runDir, "token"),
      processes,
    };
    // One dev secret for all gateways, made before any of them could race to create its own.
    await signDevToken(state.tokenDataDir, "cluster-probe", 60);
    writeGrpcKeys(o.runDir);
    const cluster = new LocalCluster(state, o.env ?? {}, o.envOf);
    cluster.provision();
    for (const p of processes) cluster.spawn(p);
    cluster.save();
    try {
      await Promise.all(processes.map((p) => cluster.waitReady(p.name, o.readyTimeoutMs ?? 120_000)));
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  /** The cluster a previous `up` left running (state.json), or undefined if none of it runs. */
  /** The key of `client:probe` (every permission), for a test's own gRPC calls to the processes. */
  probeKey(): string {
    return readFileSync(join(this.state.runDir, "grpc", "probe.key"), "utf8").trim();
  }

  static attach(runDir: string): LocalCluster | undefined {
    const path = join(runDir, "state.json");
    if (!existsSync(path)) return undefined;
    const state = JSON.parse(readFileSync(path, "utf8")) as ClusterState;
    const cluster = new LocalCluster(state, {});
    return state.processes.some((p) => cluster.alive(p.name)) ? cluster : undefined;
  }

  get gatewayUrls(): string[] {
    return this.state.processes
      .filter((p) => p.role === "gateway")
      .map((p) => `ws://127.0.0.1:${p.httpPort}/ws`);
  }

  /** The KEY=value lines `up.sh cluster` prints. */
  envLines(): string[] {
    const s = this.state;
    const http = s.processes.filter((p) => p.role === "gateway").map((p) => `http://127.0.0.1:${p.httpPort}`);
    return [
      `GATEWAY_URLS=${this.gatewayUrls.join(",")}`,
      `GATEWAY_HTTP_URLS=${http.join(",")}`,
      `TOKEN_DATA_DIR=${s.tokenDataDir}`,
      `CLUSTER_STATE=${join(s.runDir, "state.json")}`,
      `CLUSTER_TOPIC_PREFIX=${s.topicPrefix}`,
      `CLUSTER_KEYSPACE=${s.keyspace}`,
      `KAFKA_BROKERS=${s.kafkaBrokers}`,
      `CASSANDRA_CONTACT_POINTS=${s.cassandraContactPoints}`,
    ];
  }

  process(name: string): ClusterProcess {
    const p = this.state.processes.find((x) => x.name === name);
    if (!p)
      throw new Error(
        `no cluster process ${name} (have ${this.state.processes.map((x) => x.name).join(", ")})`,
      );
    return p;
  }

  logPath(name: string): string {
    return join(this.state.runDir, `${name}.log`);
  }

  private provision(): void {
    const p = { ...this.state.processes[0]!, name: "provision" };
    const result = spawnSync(process.execPath, [cliPath, "provision"], {
      env: processEnv(this.state, p, this.extraEnv),
      encoding: "utf8",
      timeout: 120_000,
    });
    if (result.status !== 0)
      throw new Error(`switchboard provision failed (${result.status}): ${result.stderr.slice(-4_000)}`);
  }

  /** Starts (or starts again, on the same ports) one process, detached, logging to <name>.log. */
  spawn(p: ClusterProcess): void {
    const log = openSync(this.logPath(p.name), "a");
    try {
      const child = spawn(
        process.execPath,
        [cliPath, "start", "--role", p.role, "--data-dir", this.state.tokenDataDir],
        {
          env: processEnv(this.state, p, { ...this.extraEnv, ...this.envOf(p) }),
          detached: true,
          stdio: ["ignore", log, log],
          cwd: this.state.runDir,
        },
      );
      child.unref();
      p.pid = child.pid ?? 0;
    } finally {
      closeSync(log);
    }
  }

  /** Restarts a process that was killed or stopped, on the same ports, and waits until it is ready. */
  async restart(name: string, timeoutMs = 60_000): Promise<void> {
    const p = this.process(name);
    if (this.alive(name)) throw new Error(`${name} (pid ${p.pid}) still runs`);
    this.spawn(p);
    this.save();
    await this.waitReady(name, timeoutMs);
  }

  /** True while the process runs (and is ours: its command line names this cluster's data dir). */
  alive(name: string): boolean {
    const { pid } = this.process(name);
    if (!pid) return false;
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      if (/^State:\s*Z/m.test(status)) return false;
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(this.state.tokenDataDir);
    } catch {
      return false;
    }
  }

  /**
   * SIGSTOP: the process freezes with its sockets open, so its peers and clients see only silence
   * (a hung host, or one cut off by the network). Pair with `resume`.
   */
  pause(name: string): void {
    const p = this.process(name);
    if (!this.alive(name)) throw new Error(`${name} does not run`);
    process.kill(p.pid, "SIGSTOP");
  }

  /** SIGCONT: undoes `pause`. */
  resume(name: string): void {
    const p = this.process(name);
    if (this.alive(name)) process.kill(p.pid, "SIGCONT");
  }

  /** Sends `signal` and waits (up to `timeoutMs`) for the process to be gone. */
  async kill(name: string, signal: NodeJS.Signals = "SIGKILL", timeoutMs = 15_000): Promise<void> {
    const p = this.process(name);
    if (!this.alive(name)) return;
    // A frozen process (pause) would not act on SIGTERM until continued.
    if (signal !== "SIGKILL") process.kill(p.pid, "SIGCONT");
    process.kill(p.pid, signal);
    const deadline = Date.now() + timeoutMs;
    while (this.alive(name)) {
      if (Date.now() > deadline) {
        process.kill(p.pid, "SIGKILL");
        if (signal === "SIGKILL") throw new Error(`${name} (pid ${p.pid}) survived SIGKILL`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async waitReady(name: string, timeoutMs: number): Promise<void> {
    const p = this.process(name);
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      if (!this.alive(name)) throw new Error(`${name} exited during startup:\n${this.tail(name)}`);
      try {
        const res = await fetch(`http://127.0.0.1:${p.httpPort}/readyz`, {
          signal: AbortSignal.timeout(2_000),
        });
        if (res.ok) return;
        last = await res.text();
      } catch (err) {
        last = String(err);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`${name} not ready within ${timeoutMs} ms (last /readyz: ${last}):\n${this.tail(name)}`);
  }

  tail(name: string, lines = 40): string {
    try {
      return readFileSync(this.logPath(name), "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /**
   * Stops every process (SIGTERM, then SIGKILL after 15 s): the gateways first, so their clients'
   * session ends still reach presence and the routers, then the rest together.
   */
  async stop(): Promise<void> {
    const ps = this.state.processes;
    await Promise.all(ps.filter((p) => p.role === "gateway").map((p) => this.kill(p.name, "SIGTERM")));
    await Promise.all(ps.filter((p) => p.role !== "gateway").map((p) => this.kill(p.name, "SIGTERM")));
  }

  private save(): void {
    writeFileSync(join(this.state.runDir, "state.json"), `${JSON.stringify(this.state, null, 2)}\n`);
  }
}
