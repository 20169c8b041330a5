/**
 * The real Kafka and Cassandra of the distributed benchmark: started (or reused) with the repo's own
 * `test/infra/up.sh kafka cassandra`, which prints their addresses as KEY=value lines. The servers are
 * shared with the tests, so the benchmark never stops them; it only creates a topic prefix and a
 * keyspace of its own per run and drops them (and its consumer groups) at the end.
 *
 * The JVMs' CPU time is read from /proc like the Switchboard server's, so each step can account for it
 * (it is part of the system under test here, not foreign load).
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
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
export function infraPid(name: InfraName): number | undefined {
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

/** CPU seconds of the Kafka and Cassandra JVMs (all threads), read from /proc/PID/stat. */
export class InfraCpu {
  readonly pids: Record<InfraName, number>;

  constructor() {
    const pids: Partial<Record<InfraName, number>> = {};
    for (const n of INFRA) {
      const pid = infraPid(n);
      if (pid === undefined)
        throw new Error(`${n} is not running (no live pid under ${cacheDir()}/run/${n})`);
      pids[n] = pid;
    }
    this.pids = pids as Record<InfraName, number>;
  }

  /** { kafka: s, cassandra: s }; throws if a JVM went away (restarted by someone else: the step is void). */
  seconds(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const n of INFRA) out[n] = procCpuSeconds(this.pids[n]);
    return out;
  }

  total(): number {
    let s = 0;
    for (const v of Object.values(this.seconds())) s += v;
    return s;
  }

  rssKb(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const n of INFRA) {
      const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${this.pids[n]}/status`, "utf8"));
      out[n] = m ? Number(m[1]) : Number.NaN;
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
