/**
 * The platform as separate role processes: the multi-process cluster of test/infra/cluster (2
 * gateways, 2 routers, presence, push, id, sequencer) on the Kafka and Cassandra of test/infra, as a
 * system under test. Senders connect to gateway 0 and receivers to gateway 1, so every measured
 * message crosses from one gateway process to the other.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  type ClusterLayout,
  type ClusterState,
  DEFAULT_LAYOUT,
  freePortRange,
  LocalCluster,
} from "../test/infra/cluster/cluster.js";
import { mintTokens } from "./client.js";
import { datacenter, type InfraCpu, type RunNames, type SharedInfra } from "./infra.js";
import type { ServerSettings } from "./options.js";
import {
  forget,
  hasTaskset,
  type Killable,
  killOnExit,
  procCpuSeconds,
  procStatusKb,
  sumMetrics,
} from "./server.js";
import { type LogDigest, SERVER_ENV, type StopReport, type SystemUnderTest } from "./sut.js";

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench

/** The run's topic prefix and keyspace as the cluster named them (`sbc<id>.`, `sbc_<id>`). */
function clusterNames(state: Pick<ClusterState, "topicPrefix" | "keyspace">): RunNames {
  return {
    id: state.keyspace.replace(/^sbc_/, ""),
    topicPrefix: state.topicPrefix,
    keyspace: state.keyspace,
  };
}

/** The warnings and errors of one process's log (the server logs JSON lines; anything else is "other"). */
function digestLog(path: string): LogDigest {
  const d: LogDigest = { warn: 0, error: 0, other: 0, top: {} };
  if (!existsSync(path)) return d;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim()) continue;
    let rec: { time?: string; level?: string; msg?: string; err?: { message?: string } } | undefined;
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      rec = undefined;
    }
    if (rec?.level !== "warn" && rec?.level !== "error") {
      if (!rec) d.other++;
      continue;
    }
    d[rec.level]++;
    const key = `${rec.level}: ${rec.msg ?? "?"}${rec.err?.message ? ` (${rec.err.message.slice(0, 160)})` : ""}`;
    const time = rec.time ?? "?";
    const seen = d.top[key];
    if (seen) {
      seen.count++;
      seen.last = time;
    } else d.top[key] = { count: 1, first: time, last: time };
  }
  d.top = Object.fromEntries(
    Object.entries(d.top)
      .sort((a, b) => b[1].count - a[1].count)
      .slice(0, 5),
  );
  return d;
}

/**
 * Kills, at once, whatever runs of the cluster in `runDir` (its state.json names the pids; its
 * processes are detached, so they would outlive an interrupted benchmark), and removes the dir.
 */
function clusterKiller(runDir: string, keepData: boolean): Killable {
  return {
    killNow: () => {
      const cluster = LocalCluster.attach(runDir);
      if (cluster)
        for (const p of cluster.state.processes) if (cluster.alive(p.name)) process.kill(p.pid, "SIGKILL");
      if (!keepData) rmSync(runDir, { recursive: true, force: true });
    },
  };
}

/**
 * The multi-process cluster (test/infra/cluster) in a run dir of its own under the data root, on a
 * free port range, with a topic prefix and keyspace of its own. Its processes inherit this process's
 * niceness and scheduling policy (--nice, --realtime are applied before it starts); their CPU
 * affinity is set explicitly (--server-cpus, else every core), so they never inherit the
 * generator's pinning.
 */
export class ClusterSystem implements SystemUnderTest {
  readonly userInUrl = false;
  readonly perfPid = undefined;
  readonly senderUrl: string;
  readonly receiverUrl: string;
  readonly description: string;
  /** Last CPU reading of each process: a process that died keeps its last value until checkRunning. */
  private readonly lastCpu: Record<string, number> = {};

  private constructor(
    readonly cluster: LocalCluster,
    readonly infra: InfraCpu,
    private readonly keepData: boolean,
    private readonly killer: Killable,
  ) {
    const [g0, g1] = cluster.gatewayUrls;
    if (!g0 || !g1)
      throw new Error("the cluster needs two gateways (senders on one, receivers on the other)");
    this.senderUrl = g0;
    this.receiverUrl = g1;
    const ps = cluster.state.processes;
    const st = cluster.state;
    this.description = `cluster of ${ps.length} processes (${ps.map((p) => `${p.name} pid ${p.pid}`).join(", ")}); senders on ${g0}, receivers on ${g1}; topics ${st.topicPrefix}*, keyspace ${st.keyspace}; logs in ${st.runDir}`;
  }

  static async start(
    s: ServerSettings,
    o: {
      infra: SharedInfra;
      partitions: number;
      layout?: ClusterLayout;
      onNames: (n: RunNames) => void;
      /** Each role process writes its V8 CPU profile here when it stops (cpu-profile-preload.ts). */
      cpuProfileDir?: string;
    },
  ): Promise<ClusterSystem> {
    const layout = o.layout ?? DEFAULT_LAYOUT;
    const runDir = mkdtempSync(join(s.dataRoot, "switchboard-bench-cluster-"));
    const count = Object.values(layout).reduce((a, b) => a + b, 0);
    const killer = clusterKiller(runDir, s.keepData);
    killOnExit(killer); // from here: an interrupted start leaves nothing running
    let cluster: LocalCluster;
    try {
      cluster = await LocalCluster.start({
        runDir,
        kafkaBrokers: o.infra.env.KAFKA_BROKERS!,
        cassandraContactPoints: o.infra.env.CASSANDRA_CONTACT_POINTS!,
        cassandraDatacenter: datacenter(o.infra.env),
        basePort: await freePortRange(2 * count),
        layout,
        env: {
          ...SERVER_ENV,
          ...s.env,
          SWITCHBOARD_LOG_LEVEL: "warn",
          SWITCHBOARD_KAFKA_PARTITIONS: String(o.partitions),
          ...(o.cpuProfileDir
            ? {
                NODE_OPTIONS: `--import=${pathToFileURL(join(here, "cpu-profile-preload.js")).href}`,
                SWITCHBOARD_BENCH_CPU_PROF_DIR: o.cpuProfileDir,
              }
            : {}),
        },
      });
    } catch (err) {
      // The cluster stopped what it had started; its names are in state.json once it spawned.
      const statePath = join(runDir, "state.json");
      if (existsSync(statePath)) o.onNames(clusterNames(JSON.parse(readFileSync(statePath, "utf8"))));
      if (!s.keepData) rmSync(runDir, { recursive: true, force: true });
      forget(killer);
      throw err;
    }
    o.onNames(clusterNames(cluster.state));
    const sut = new ClusterSystem(cluster, o.infra.cpu, s.keepData, killer);
    if (hasTaskset()) {
      const cpuList = s.serverCpus ?? `0-${cpus().length - 1}`;
      for (const p of cluster.state.processes)
        execFileSync("taskset", ["-a", "-c", "-p", cpuList, String(p.pid)], { stdio: "ignore" });
    }
    return sut;
  }

  tokens(users: string[]): Promise<string[]> {
    return mintTokens(this.cluster.state.tokenDataDir, users);
  }

  serverCpuSeconds(): Record<string, number> {
    for (const p of this.cluster.state.processes) {
      try {
        this.lastCpu[p.name] = procCpuSeconds(p.pid);
      } catch {
        // Gone: checkRunning reports it after the step.
      }
    }
    return { ...this.lastCpu };
  }

  async metrics(names: string[]): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    const each = await Promise.all(
      this.cluster.state.processes.map((p) => scrape(`http://127.0.0.1:${p.httpPort}/metrics`, names)),
    );
    for (const m of each) for (const [k, v] of Object.entries(m)) out[k] = (out[k] ?? 0) + v;
    return out;
  }

  rssKb(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const p of this.cluster.state.processes) out[p.name] = procStatusKb(p.pid, "VmRSS");
    return out;
  }

  checkRunning(): void {
    const dead = this.cluster.state.processes.filter((p) => !this.cluster.alive(p.name));
    if (dead.length > 0)
      throw new Error(
        `cluster process ${dead.map((p) => p.name).join(", ")} exited:\n${this.cluster.tail(dead[0]!.name)}`,
      );
  }

  async stop(): Promise<StopReport> {
    const ps = this.cluster.state.processes;
    const dead = ps.filter((p) => !this.cluster.alive(p.name)).map((p) => p.name);
    // Gateways first, and to the end: closing their sessions calls presence and the routers.
    await Promise.all(
      ps.filter((p) => p.role === "gateway").map((p) => this.cluster.kill(p.name, "SIGTERM")),
    );
    await this.cluster.stop();
    forget(this.killer);
    const logs: Record<string, LogDigest> = {};
    for (const p of this.cluster.state.processes) logs[p.name] = digestLog(this.cluster.logPath(p.name));
    if (!this.keepData) rmSync(this.cluster.state.runDir, { recursive: true, force: true });
    return { problems: dead.map((n) => `${n} had exited before the stop`), logs };
  }

  describe(): Record<string, unknown> {
    const s = this.cluster.state;
    return {
      run_dir: s.runDir,
      topic_prefix: s.topicPrefix,
      keyspace: s.keyspace,
      sender_url: this.senderUrl,
      receiver_url: this.receiverUrl,
      processes: Object.fromEntries(
        s.processes.map((p) => [p.name, { pid: p.pid, http_port: p.httpPort, grpc_port: p.grpcPort }]),
      ),
    };
  }
}

/** Sums every sample of each requested metric name on one /metrics page ({} when unreachable). */
async function scrape(url: string, names: string[]): Promise<Record<string, number>> {
  let text: string;
  try {
    text = await (await fetch(url, { signal: AbortSignal.timeout(5_000) })).text();
  } catch {
    return {};
  }
  return sumMetrics(text, names);
}
