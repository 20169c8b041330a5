/**
 * The server-side CLI commands: `start` (one role, or all of them in one process), `provision`
 * (topics and schema), `token` (a dev JWT), and `config docs` (the configuration reference).
 * Output is one JSON object per line.
 */
import { parseArgs } from "node:util";
import { signDevToken } from "../lib/auth.js";
import { BUILD_VERSION } from "../lib/build-info.js";
import { type Config, configDocs, envName, loadConfig, unknownVariables } from "../lib/config.js";
import { createLogger, type Logger, setLogLevel } from "../lib/log.js";
import { distributedOptions } from "../process/backends.js";
import { devTokensRefusal } from "../process/http.js";
import { ROLES, type RoleName, type RunningProcess, startRole } from "../roles/index.js";

const TTL_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

export function parseTtl(text: string): number {
  const match = /^(\d+)([smhd])?$/.exec(text);
  if (!match) throw new Error(`invalid --ttl ${JSON.stringify(text)}: use e.g. 90s, 30m, 1h, 7d`);
  return Number(match[1]) * TTL_UNITS[match[2] ?? "s"]!;
}

/** The environment, where the KEY=value lines printed by test/infra/up.sh also work as they are. */
function platformEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  env.SWITCHBOARD_KAFKA_BROKERS ??= process.env.KAFKA_BROKERS;
  env.SWITCHBOARD_CASSANDRA_CONTACT_POINTS ??= process.env.CASSANDRA_CONTACT_POINTS;
  env.SWITCHBOARD_CASSANDRA_DATACENTER ??= process.env.CASSANDRA_DATACENTER;
  return env;
}

export async function runStart(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: "string" },
      host: { type: "string" },
      "data-dir": { type: "string" },
      "grpc-port": { type: "string" },
      backend: { type: "string" },
      role: { type: "string", default: "all" },
      dev: { type: "boolean", default: false },
    },
    strict: true,
  });
  const role = values.role as RoleName;
  if (!ROLES.includes(role))
    throw new Error(
      `--role ${values.role}: expected one of ${ROLES.join(", ")} (all: every service in one process)`,
    );
  const overrides: Record<string, string> = {};
  if (values.port !== undefined) overrides["http.port"] = values.port;
  if (values.host !== undefined) overrides["http.host"] = values.host;
  if (values["data-dir"] !== undefined) overrides.dataDir = values["data-dir"];
  if (values["grpc-port"] !== undefined) {
    overrides["grpc.port"] = values["grpc-port"];
    overrides["grpc.enabled"] = "true";
  }
  if (values.backend !== undefined) overrides.backend = values.backend;
  if (values.dev) overrides["auth.devTokens"] = "true";
  const env = platformEnv();
  const config = loadConfig(env, overrides);
  setLogLevel(config.log.level);
  const log = createLogger({ service: "switchboard", role });
  warnUnknownVariables(env, log);
  const workerId = workerIdWarning(role, config, env);
  if (workerId) log.warn(workerId);
  log.info("starting", { version: BUILD_VERSION, node: process.versions.node, backend: config.backend });
  const running = await startRole(role, config, log);
  current = { running, timeoutMs: config.shutdownTimeoutMs };
  const url = running.gateway ? `ws://${config.http.host}:${running.httpPort}/ws` : undefined;
  const warning = running.gateway ? devModeWarning(config, running.httpPort) : undefined;
  if (warning) log.warn(warning);
  return new Promise<number>((resolve) => {
    let first: NodeJS.Signals | undefined;
    const onSignal = (signal: NodeJS.Signals) => {
      if (first !== undefined) {
        // "SIGINT always stops at once": also during a SIGTERM's drain, or a close that takes long.
        log.warn("second signal while stopping: exiting at once", { signal, first });
        process.exit(SIGNAL_EXIT_CODES[signal] ?? 1);
      }
      first = signal;
      const drainMs = signal === "SIGTERM" ? config.gateway.shutdownDrainMs : 0;
      void stop(running, { signal, drainMs, timeoutMs: config.shutdownTimeoutMs }, log).then(resolve);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    // Only now: whoever waits for this line may signal at once, and must find the handlers in place.
    process.stdout.write(
      `${JSON.stringify({ status: "started", version: BUILD_VERSION, role, ...(url ? { url } : {}), port: running.httpPort, grpc_port: running.grpcPort, ...(running.internalPort !== undefined ? { internal_port: running.internalPort } : {}), data_dir: config.dataDir, pid: process.pid, ...(warning ? { warning } : {}) })}\n`,
    );
  });
}

/** Exit codes of a second signal during a stop (128 + the signal's number, as a shell reports it). */
const SIGNAL_EXIT_CODES: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143 };
/**
 * After a clean close, how long a handle nothing closed (a socket of a library, a timer) may keep the
 * process before it exits anyway.
 */
const LINGER_AFTER_CLOSE_MS = 2_000;

/** The process that `start` runs, for the fatal-error path (closeRunning). */
let current: { running: RunningProcess; timeoutMs: number } | undefined;

/**
 * A stop: a gateway drains first (SIGTERM with gateway.shutdownDrainMs), then everything closes within
 * shutdownTimeoutMs, or the process exits with code 1 without waiting further. Resolves with the exit
 * code: 1 when something failed to close, else the code already set (70 after a storage failure) or 0.
 */
async function stop(
  running: RunningProcess,
  o: { signal: string; drainMs: number; timeoutMs: number },
  log: Logger,
): Promise<number> {
  log.info("stopping", { signal: o.signal, drainMs: o.drainMs, timeoutMs: o.timeoutMs });
  if (o.drainMs > 0 && running.gateway) await drainBeforeStop(running.gateway, o.drainMs);
  const outcome = await closeWithin(running, o.timeoutMs);
  if (outcome === "timeout") {
    log.error("shutdown did not finish within shutdownTimeoutMs: exiting without waiting further", {
      timeoutMs: o.timeoutMs,
    });
    process.exit(1);
  }
  if (outcome !== "closed") log.error("shutdown failed: something did not close", { err: outcome.err });
  const code = outcome === "closed" ? (process.exitCode === undefined ? 0 : Number(process.exitCode)) : 1;
  setTimeout(() => process.exit(code), LINGER_AFTER_CLOSE_MS).unref();
  return code;
}

/** running.close(), bounded: "closed", "timeout", or what it failed with. */
async function closeWithin(
  running: RunningProcess,
  timeoutMs: number,
): Promise<"closed" | "timeout" | { err: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      running.close().then(
        () => "closed" as const,
        (err: unknown) => ({ err }),
      ),
      new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * For a fatal error (cmd/switchboard.ts: an uncaught exception or unhandled rejection): closes the
 * process `start` runs, if any, within shutdownTimeoutMs; resolves however that went.
 */
export async function closeRunning(): Promise<void> {
  if (!current) return;
  await closeWithin(current.running, current.timeoutMs);
}

/** Logs every SWITCHBOARD_* variable that is no setting (and so is ignored), with the nearest one. */
function warnUnknownVariables(env: NodeJS.ProcessEnv, log: Logger): void {
  for (const { name, didYouMean } of unknownVariables(env))
    log.warn(
      `unknown environment variable ${name} ignored${didYouMean ? `: did you mean ${didYouMean}?` : ""}`,
      { variable: name, ...(didYouMean ? { didYouMean } : {}) },
    );
}

/**
 * Role all mints message and group ids itself, with id.workerId: all-in-one processes sharing one
 * distributed backend (Kafka topics, Cassandra keyspace) must each have their own, or their ids may
 * collide. Nothing tells how many share it, so the default (0, not set) is warned about there.
 */
export function workerIdWarning(role: RoleName, config: Config, env: NodeJS.ProcessEnv): string | undefined {
  if (role !== "all" || config.backend !== "distributed") return undefined;
  if (env[envName(["id", "workerId"])] !== undefined) return undefined;
  return `id.workerId is not set (${envName(["id", "workerId"])}), so this process mints ids as worker 0: every all-in-one process (role all) sharing these Kafka topics and Cassandra keyspace must have its own id.workerId (0-1023), or their message and group ids may collide`;
}

/** What the start-up line shouts when dev mode was asked for: on, or asked for and refused (why). */
export function devModeWarning(config: Config, port: number): string | undefined {
  if (!config.auth.devTokens) return undefined;
  const refusal = devTokensRefusal(config);
  return refusal === undefined
    ? `DEV MODE: GET http://${config.http.host}:${port}/v1/dev/token hands a token for ANY user to anyone who reaches this port (a reverse proxy on this host makes that everyone); never use --dev in production`
    : `dev mode asked for (--dev or auth.devTokens) but dev tokens are not served: ${refusal}`;
}

/**
 * Graceful stop of a gateway (Kubernetes sends SIGTERM before removing a Pod): refuse new connections,
 * tell every client to reconnect elsewhere with jitter over `windowMs`, and return once they are gone
 * or the window (plus a second for close handshakes) has passed.
 */
async function drainBeforeStop(
  gateway: { drain(windowMs: number): number; readonly connections: number },
  windowMs: number,
) {
  if (gateway.drain(windowMs) === 0) return;
  const deadline = Date.now() + windowMs + 1_000;
  while (gateway.connections > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
}

/**
 * `switchboard sequencer`: `start --role sequencer` on the distributed backend, its HTTP endpoints on a
 * free port unless `--port` says otherwise (kept for scripts that start a sequencer beside a platform).
 */
export function runSequencer(argv: string[]): Promise<number> {
  return runStart(["--role", "sequencer", "--backend", "distributed", "--port", "0", ...argv]);
}

/**
 * `switchboard provision`: creates the Kafka topics and the Cassandra keyspace and schema (idempotent),
 * what the operator does for a ChatCluster; split roles only verify that they exist.
 */
export async function runProvision(argv: string[]): Promise<number> {
  parseArgs({ args: argv, options: {}, strict: true });
  const env = platformEnv();
  const config = loadConfig(env);
  setLogLevel(config.log.level);
  const log = createLogger({ service: "provision" });
  warnUnknownVariables(env, log);
  const o = distributedOptions(config, log, {
    sequencer: false,
    appends: false,
    provision: true,
    role: "provision",
  });
  const { provisionDistributed } = await import("../backends/distributed/provision.js");
  const result = await provisionDistributed({
    kafka: {
      brokers: o.brokers,
      topicPrefix: o.topicPrefix,
      partitions: o.partitions,
      replicationFactor: o.replicationFactor,
      retentionHours: o.retentionHours,
      ...(o.ssl === undefined ? {} : { ssl: o.ssl }),
      ...(o.sasl === undefined ? {} : { sasl: o.sasl }),
    },
    cassandra: {
      contactPoints: o.cassandra.contactPoints,
      localDataCenter: o.cassandra.localDataCenter,
      keyspace: o.cassandra.keyspace,
      replication: o.cassandra.replication ?? { class: "SimpleStrategy", replication_factor: 1 },
      ...(o.cassandra.credentials ? { credentials: o.cassandra.credentials } : {}),
      ...(o.cassandra.ssl ? { ssl: o.cassandra.ssl } : {}),
    },
    clientId: o.clientId,
    log,
  });
  process.stdout.write(`${JSON.stringify({ status: "provisioned", ...result })}\n`);
  return 0;
}

export async function runToken(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      user: { type: "string" },
      "data-dir": { type: "string" },
      ttl: { type: "string", default: "1h" },
    },
    strict: true,
  });
  if (!values.user) throw new Error("--user is required");
  const config = loadConfig();
  const dataDir = values["data-dir"] ?? config.dataDir;
  // The key the gateways check: auth.secretFile's when set (unless a data dir is named explicitly).
  const secretFile =
    values["data-dir"] === undefined && config.auth.secretFile ? config.auth.secretFile : undefined;
  const token = await signDevToken(dataDir, values.user, parseTtl(values.ttl), secretFile);
  process.stdout.write(`${JSON.stringify({ token, user: values.user })}\n`);
  return 0;
}

/**
 * `switchboard backup --out FILE [--data-dir DIR]`: an online copy of the embedded database, taken
 * while the server runs (internal/backends/embedded/backup.ts); restore by stopping the server and
 * putting the file in place as DATA_DIR/switchboard.mdb.
 */
export async function runBackup(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { "data-dir": { type: "string" }, out: { type: "string" } },
    strict: true,
  });
  if (!values.out) throw new Error("--out is required: the file to write the copy to");
  const config = loadConfig();
  const dataDir = values["data-dir"] ?? config.dataDir;
  const { backupDataDir } = await import("../backends/embedded/backup.js");
  const started = Date.now();
  const { bytes } = await backupDataDir(dataDir, values.out, config.dataDirFreeBytesMin);
  process.stdout.write(
    `${JSON.stringify({ status: "backed up", data_dir: dataDir, out: values.out, bytes, ms: Date.now() - started })}\n`,
  );
  return 0;
}

/**
 * `switchboard grpc-key --principal P`: a new random gRPC key for P and the line of grpc.keyFile that
 * admits it (the file holds only the hash; the key goes to the caller's grpc.credentialFile).
 */
export async function runGrpcKey(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { principal: { type: "string" } }, strict: true });
  const { isPrincipal } = await import("../grpc-auth/policy.js");
  const { newKey } = await import("../grpc-auth/key-file.js");
  const principal = values.principal ?? "";
  if (!isPrincipal(principal))
    throw new Error("--principal must be role:<role>, operator or client:<name> (docs/adr/0007)");
  process.stdout.write(`${JSON.stringify({ principal, ...newKey(principal) })}
`);
  return 0;
}

export function runConfig(argv: string[]): number {
  if (argv[0] !== "docs") throw new Error("usage: switchboard config docs");
  process.stdout.write(`${configDocs()}\n`);
  return 0;
}
