/**
 * The real Kafka and Cassandra of the distributed benchmark: started (or reused) with the repo's own
 * `test/infra/up.sh kafka cassandra`, which prints their addresses as KEY=value lines. The servers are
 * shared with the tests, so the benchmark never stops them; it only creates a topic prefix and a
 * keyspace of its own per run and drops them (and its consumer groups) at the end.
 *
 * The JVMs' CPU time is read from /proc like the Switchboard server's, so each step can account for it
 * (it is part of the system under test here, not foreign load).
 */
import { execFileSync, spawn } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import cassandra from "cassandra-driver";
import { Kafka, logLevel } from "kafkajs";
import { topicNames } from "../internal/backends/kafka/topics.js";
import { procCpuSeconds } from "./server.js";

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench
export const REPO_ROOT = resolve(here, "../..");
const UP_SH = join(REPO_ROOT, "test/infra/up.sh");

export type InfraName = "kafka" | "cassandra";
export const INFRA: readonly InfraName[] = ["kafka", "cassandra"];

/** The KEY=value lines of up.sh: KAFKA_BROKERS, CASSANDRA_CONTACT_POINTS, CASSANDRA_DATACENTER. */
export type InfraEnv = Record<string, string>;

/** Runs `bash test/infra/up.sh kafka cassandra` (installs on first use, reuses running servers). */
export function ensureInfra(log: (s: string) => void, timeoutMs = 20 * 60_000): Promise<InfraEnv> {
  return new Promise((res, rej) => {
    const child = spawn("bash", [UP_SH, ...INFRA], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      timeout: timeoutMs,
      killSignal: "SIGKILL",
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      out += c;
    });
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      err += c;
      for (const l of c.split("\n").filter(Boolean)) log(`  ${l}`);
    });
    child.on("error", rej);
    child.on("close", (code, signal) => {
      const env: InfraEnv = {};
      for (const line of out.split("\n")) {
        const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
        if (m) env[m[1]!] = m[2]!;
      }
      if (code === 0 && env.KAFKA_BROKERS && env.CASSANDRA_CONTACT_POINTS) res(env);
      else
        rej(
          new Error(
            `${UP_SH} ${INFRA.join(" ")} failed (${signal ?? `exit ${code}`}):\n${err.split("\n").slice(-30).join("\n")}`,
          ),
        );
    });
  });
}

const cacheDir = () => process.env.SWITCHBOARD_CACHE ?? join(homedir(), ".cache", "switchboard");

/**
 * The pid of our running server (as test/infra/servers.ts serverPid): the pid file's process only if
 * its command line carries `-Dswitchboard.infra=<run dir>`, so a recycled pid is never counted.
 */
export function infraPidFromFile(name: InfraName): number | undefined {
  const runDir = join(cacheDir(), "run", name);
  try {
    const pid = Number.parseInt(readFileSync(join(runDir, "server.pid"), "utf8").trim(), 10);
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return args.includes(`-Dswitchboard.infra=${runDir}`) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Inodes of the TCP sockets listening on `port` (any address, IPv4 and IPv6), from /proc/net/tcp{,6}. */
function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length < 10 || f[3] !== "0A") continue; // 0A: LISTEN
      if (f[1]!.slice(f[1]!.lastIndexOf(":") + 1) === hexPort && f[9] !== "0") inodes.add(f[9]!);
    }
  }
  return inodes;
}

/**
 * The pid of the process listening on TCP `port`: the socket's inode from /proc/net/tcp{,6}, then the
 * process holding `socket:[inode]` among /proc/<pid>/fd; else `ss -ltnp`. Undefined when neither
 * finds it (not running, or another user's process that /proc does not show us).
 */
export function pidListeningOn(port: number): number | undefined {
  const inodes = listeningInodes(port);
  if (inodes.size > 0) {
    const targets = new Set([...inodes].map((i) => `socket:[${i}]`));
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      let fds: string[];
      try {
        fds = readdirSync(`/proc/${entry}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        try {
          if (targets.has(readlinkSync(`/proc/${entry}/fd/${fd}`))) return Number(entry);
        } catch {
          // closed meanwhile
        }
      }
    }
  }
  try {
    const out = execFileSync("ss", ["-Hltnp", `sport = :${port}`], {
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 5_000,
    }).toString();
    const m = /pid=(\d+)/.exec(out);
    if (m) return Number(m[1]);
  } catch {
    // no ss, or not permitted
  }
  return undefined;
}

/** The port of the first `host:port` of a comma list (the default when it names none). */
export function firstPort(list: string | undefined, fallback: number): number {
  const first = (list ?? "").split(",")[0]?.trim() ?? "";
  const m = /:(\d+)$/.exec(first);
  return m ? Number(m[1]) : fallback;
}

/** The ports the JVMs listen on for clients: from up.sh's KAFKA_BROKERS and CASSANDRA_CONTACT_POINTS. */
export function infraPorts(env: InfraEnv): Record<InfraName, number> {
  return {
    kafka: firstPort(env.KAFKA_BROKERS, 9092),
    cassandra: firstPort(env.CASSANDRA_CONTACT_POINTS, 9042),
  };
}

/**
 * CPU seconds of the Kafka and Cassandra JVMs (all threads), read from /proc/PID/stat. Each JVM is
 * found by the port it listens on (the broker port, the CQL port), else by test/infra's pid file; one
 * not found is left out of every reading (its figures say "n/a").
 */
export class InfraCpu {
  /** The JVMs found, by name (a missing name: not found). */
  readonly pids: Partial<Record<InfraName, number>>;
  /** How each was found ("port 19042", "pid file"), or "not found". */
  readonly found: Record<InfraName, string>;

  constructor(ports: Record<InfraName, number>) {
    const pids: Partial<Record<InfraName, number>> = {};
    const found = {} as Record<InfraName, string>;
    for (const n of INFRA) {
      let pid = pidListeningOn(ports[n]);
      found[n] = `port ${ports[n]}`;
      if (pid === undefined) {
        pid = infraPidFromFile(n);
        found[n] = pid === undefined ? "not found" : "pid file";
      }
      if (pid !== undefined) pids[n] = pid;
    }
    this.pids = pids;
    this.found = found;
  }

  /** The names of the JVMs found. */
  get names(): InfraName[] {
    return INFRA.filter((n) => this.pids[n] !== undefined);
  }

  /**
   * { kafka: s, cassandra: s } of the JVMs found; a JVM that went away (restarted by someone else)
   * is left out, so the step's figure for it is "n/a" rather than a wrong delta.
   */
  seconds(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const n of this.names) {
      try {
        out[n] = procCpuSeconds(this.pids[n]!);
      } catch {
        // gone
      }
    }
    return out;
  }

  total(): number {
    let s = 0;
    for (const v of Object.values(this.seconds())) s += v;
    return s;
  }

  rssKb(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const n of this.names) {
      try {
        const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${this.pids[n]}/status`, "utf8"));
        out[n] = m ? Number(m[1]) : Number.NaN;
      } catch {
        out[n] = Number.NaN;
      }
    }
    return out;
  }
}

/** The real Kafka and Cassandra of test/infra (shared with the tests: reused if running, never stopped). */
export interface SharedInfra {
  env: InfraEnv;
  /** Their JVMs' CPU, part of the system under test. */
  cpu: InfraCpu;
}

/** A run's own topic prefix and keyspace (and consumer-group prefix, which the server derives from the topic prefix). */
export interface RunNames {
  id: string;
  topicPrefix: string;
  keyspace: string;
}

export function runNames(): RunNames {
  const id = `${Date.now().toString(36)}${process.pid.toString(36)}`;
  return { id, topicPrefix: `bench-${id}.`, keyspace: `bench_${id}` };
}

export function contactPoints(env: InfraEnv): string[] {
  return env.CASSANDRA_CONTACT_POINTS!.split(",").map((s) => s.trim());
}

export function datacenter(env: InfraEnv): string {
  return env.CASSANDRA_DATACENTER ?? "datacenter1";
}

/**
 * The Cassandra node's own counts of local reads and writes for each table of the run's keyspace
 * (`system_views.local_read_latency` / `local_write_latency`): one per partition read or written on
 * this replica. A batch of many partitions is one client request but one local write (a mutation:
 * commit log entry, memtable update) per partition, and the node's CPU follows those (bench/README.md,
 * "What a Cassandra request and a mutation cost"). Keys: `read:<table>` and `write:<table>`.
 */
export class CassandraNodeCounts {
  private readonly client: cassandra.Client;
  private connected: Promise<void> | undefined;
  private failed = false;

  constructor(
    env: InfraEnv,
    private readonly keyspace: string,
    private readonly log: (s: string) => void,
  ) {
    this.client = new cassandra.Client({
      contactPoints: contactPoints(env),
      localDataCenter: datacenter(env),
      socketOptions: { connectTimeout: 10_000, readTimeout: 30_000 },
    });
  }

  /** The counts now; undefined if the node could not be asked (then the step reports none). */
  async read(): Promise<Record<string, number> | undefined> {
    try {
      this.connected ??= this.client.connect();
      await this.connected;
      const out: Record<string, number> = {};
      for (const kind of ["read", "write"] as const) {
        const rs = await this.client.execute(
          `SELECT table_name, count FROM system_views.local_${kind}_latency WHERE keyspace_name = ?`,
          [this.keyspace],
        );
        for (const row of rs.rows) out[`${kind}:${row.table_name as string}`] = Number(row.count);
      }
      return out;
    } catch (err) {
      if (!this.failed) this.log(`  Cassandra's local read/write counts unavailable: ${String(err)}`);
      this.failed = true;
      return undefined;
    }
  }

  async close(): Promise<void> {
    await this.client.shutdown().catch(() => undefined);
  }
}

/**
 * Drops the run's keyspace (auto_snapshot is off on the test node, so the disk is freed), its topics
 * and its consumer groups. Best effort: returns what failed instead of throwing.
 */
export async function dropRunState(env: InfraEnv, names: RunNames): Promise<string[]> {
  const problems: string[] = [];
  const client = new cassandra.Client({
    contactPoints: contactPoints(env),
    localDataCenter: datacenter(env),
    socketOptions: { connectTimeout: 10_000, readTimeout: 120_000 },
  });
  try {
    await client.connect();
    await client.execute(`DROP KEYSPACE IF EXISTS ${names.keyspace}`);
  } catch (err) {
    problems.push(`drop keyspace ${names.keyspace}: ${String(err)}`);
  } finally {
    await client.shutdown().catch(() => undefined);
  }
  const kafka = new Kafka({
    clientId: `switchboard-bench-${names.id}`,
    brokers: env.KAFKA_BROKERS!.split(","),
    logLevel: logLevel.NOTHING,
    retry: { retries: 3 },
  });
  const admin = kafka.admin();
  try {
    await admin.connect();
    const groups = (await admin.listGroups()).groups
      .map((g) => g.groupId)
      .filter((g) => g.startsWith(names.topicPrefix));
    if (groups.length > 0)
      await admin.deleteGroups(groups).catch((err: unknown) => {
        problems.push(`delete consumer groups ${groups.join(",")}: ${String(err)}`);
      });
    const existing = new Set(await admin.listTopics());
    const topics = Object.values(topicNames(names.topicPrefix)).filter((t) => existing.has(t));
    if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 30_000 });
  } catch (err) {
    problems.push(`delete topics ${names.topicPrefix}*: ${String(err)}`);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  return problems;
}
