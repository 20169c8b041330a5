/**
 * The server-side CLI commands: `start` (one role, or all of them in one process), `provision`
 * (topics and schema), `token` (a dev JWT), and `config docs` (the configuration reference).
 * Output is one JSON object per line.
 */
import { parseArgs } from "node:util";
import { signDevToken } from "../lib/auth.js";
import { type Config, configDocs, loadConfig } from "../lib/config.js";
import { createLogger, setLogLevel } from "../lib/log.js";
import { distributedOptions } from "../process/backends.js";
import { devTokensRefusal } from "../process/http.js";
import { ROLES, type RoleName, startRole } from "../roles/index.js";

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
  const config = loadConfig(platformEnv(), overrides);
  setLogLevel(config.log.level);
  const log = createLogger({ service: "switchboard", role });
  const running = await startRole(role, config, log);
  const url = running.gateway ? `ws://${config.http.host}:${running.httpPort}/ws` : undefined;
  const warning = running.gateway ? devModeWarning(config, running.httpPort) : undefined;
  if (warning) log.warn(warning);
  process.stdout.write(
    `${JSON.stringify({ status: "started", role, ...(url ? { url } : {}), port: running.httpPort, grpc_port: running.grpcPort, data_dir: config.dataDir, pid: process.pid, ...(warning ? { warning } : {}) })}\n`,
  );
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = async (signal: string, drainMs: number) => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal, drainMs });
      try {
        if (drainMs > 0 && running.gateway) await drainBeforeStop(running.gateway, drainMs);
        await running.close();
      } catch (err) {
        log.error("shutdown failed", { err });
      }
      resolve();
    };
    process.once("SIGINT", () => void stop("SIGINT", 0));
    process.once("SIGTERM", () => void stop("SIGTERM", config.gateway.shutdownDrainMs));
  });
  return process.exitCode === undefined ? 0 : Number(process.exitCode);
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
  const config = loadConfig(platformEnv());
  setLogLevel(config.log.level);
  const log = createLogger({ service: "provision" });
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
  const dataDir = values["data-dir"] ?? loadConfig().dataDir;
  const token = await signDevToken(dataDir, values.user, parseTtl(values.ttl));
  process.stdout.write(`${JSON.stringify({ token, user: values.user })}\n`);
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
