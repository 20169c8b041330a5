/**
 * The server-side CLI commands: `start` (the all-in-one platform), `token` (a dev JWT), and
 * `config docs` (the configuration reference). Output is one JSON object per line.
 */
import { parseArgs } from "node:util";
import { openDistributedBackends } from "../backends/distributed/index.js";
import { signDevToken } from "../lib/auth.js";
import { configDocs, loadConfig } from "../lib/config.js";
import { createLogger } from "../lib/log.js";
import { distributedOptions, startPlatform } from "../platform/index.js";

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
    },
    strict: true,
  });
  // The operator deploys one role per Deployment; until the services run apart, only "all" exists.
  if (values.role !== "all")
    throw new Error(
      `--role ${values.role}: this build runs every service in one process; use --role all (split roles are not implemented yet)`,
    );
  const overrides: Record<string, string> = {};
  if (values.port !== undefined) overrides["http.port"] = values.port;
  if (values.host !== undefined) overrides["http.host"] = values.host;
  if (values["data-dir"] !== undefined) overrides.dataDir = values["data-dir"];
  if (values["grpc-port"] !== undefined) overrides["grpc.port"] = values["grpc-port"];
  if (values.backend !== undefined) overrides.backend = values.backend;
  const config = loadConfig(platformEnv(), overrides);
  const log = createLogger({ service: "switchboard" });
  const platform = await startPlatform(config, log);
  process.stdout.write(
    `${JSON.stringify({ status: "started", url: `ws://${config.http.host}:${platform.port}/ws`, port: platform.port, grpc_port: platform.grpcPort, data_dir: config.dataDir })}\n`,
  );
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = async (signal: string, drainMs: number) => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal, drainMs });
      try {
        if (drainMs > 0) await drainBeforeStop(platform.gateway, drainMs);
        await platform.close();
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
 * `switchboard sequencer`: only the sequencer of the distributed backend (ADR 0002), as deployed
 * beside the routers; several may run, the consumer group shares the partitions among them.
 */
export async function runSequencer(argv: string[]): Promise<number> {
  parseArgs({ args: argv, options: {}, strict: true });
  const config = loadConfig(platformEnv());
  const log = createLogger({ service: "sequencer", pid: process.pid });
  const backends = await openDistributedBackends(distributedOptions(config, log, true));
  process.stdout.write(`${JSON.stringify({ status: "started", service: "sequencer", pid: process.pid })}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => void backends.close().then(resolve, resolve);
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
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

export function runConfig(argv: string[]): number {
  if (argv[0] !== "docs") throw new Error("usage: switchboard config docs");
  process.stdout.write(`${configDocs()}\n`);
  return 0;
}
