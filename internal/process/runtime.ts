/**
 * What every Switchboard process has, whatever its role: metrics, the HTTP server with health,
 * readiness and metrics (up first, so a process that waits for its storage is alive but not ready;
 * with http.internalPort, a second one for them, closed with it),
 * a gRPC server, resources closed in reverse order of opening, and one fatal path.
 */
import type { DescService } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import type { Gateway } from "../gateway/index.js";
import type { RoleName as AuthRole, Policy } from "../grpc-auth/policy.js";
import { grpcCredential, grpcGuard, grpcPolicy } from "../grpc-auth/setup.js";
import { grpcTls, type RoleChannel } from "../grpc-auth/tls.js";
import { checkClientKeys } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import { onInvariantViolation } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { createMetrics, type Metrics } from "../lib/metrics.js";
import { type CallGuard, guardServer, startingServicesOf } from "../lib/rpc.js";
import { startTracing } from "../lib/tracing.js";
import { serveGrpc } from "./grpc.js";
import { devTokensRefusal, serveHttp } from "./http.js";

export const ROLES = ["all", "gateway", "router", "presence", "push", "id", "sequencer"] as const;
export type RoleName = (typeof ROLES)[number];

export interface RoleContext {
  readonly config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** This process's gRPC server (undefined for role sequencer, and for role all unless asked: servesGrpc). */
  readonly grpc: grpc.Server | undefined;
  readonly grpcPort: number;
  /** The port this process's HTTP server listens on (bound before the role starts). */
  readonly httpPort: number;
  /** This process's credential for its gRPC calls to other roles (grpc.credentialFile), if any. */
  readonly credential: (() => string | undefined) | undefined;
  /** What backend clients may do (grpc.clients and grpc.policyFile), as in force now. */
  readonly policy: () => Policy;
  /** The mTLS credentials of this process's gRPC calls to `role` (grpc.tls.dir), if any. */
  readonly tls: ((role: AuthRole) => RoleChannel) | undefined;
  /** Closes `resource` when the process stops (in reverse order of registration); returns it. */
  own<T extends { close(): unknown }>(resource: T): T;
  /** Aborted as the process begins to stop, before anything closes: what should end first listens. */
  readonly stopping: AbortSignal;
  /** A readiness condition: returns why the process is not ready, or undefined. */
  readiness(check: () => string | undefined): void;
  /**
   * Retries `open` with capped backoff until it succeeds (logging each failure; /readyz says why),
   * or until it fails with an error `final` says no wait can cure, which it throws.
   */
  retry<T>(what: string, open: () => Promise<T>, final?: (err: unknown) => boolean): Promise<T>;
  /** Stops the process with exit code 70: used when acknowledging would no longer mean durable. */
  fatal(err: unknown): void;
}

/** What a role's composition root returns. */
export interface RoleParts {
  gateway?: Gateway;
}

export type RoleStarter = (ctx: RoleContext) => Promise<RoleParts>;

export interface RunningProcess {
  role: RoleName;
  httpPort: number;
  /** The internal HTTP server's port (http.internalPort: /healthz, /readyz, /metrics), when it is on. */
  internalPort: number | undefined;
  grpcPort: number;
  gateway: Gateway | undefined;
  metrics: Metrics;
  /** Closes everything; rejects (after closing the rest) when something failed to close. */
  close(): Promise<void>;
}

/**
 * Whether the process opens a gRPC port: the split roles always (but the sequencer, which serves
 * nothing), role all only when asked (grpc.enabled, which `--grpc-port` sets, or a non-zero
 * grpc.port): a laptop's `npm start` listens on nothing but its HTTP port.
 */
export function servesGrpc(role: RoleName, config: Config): boolean {
  if (role === "sequencer") return false;
  if (role === "all") return config.grpc.enabled || config.grpc.port !== 0;
  return true;
}

/**
 * A gRPC port without authentication lets anyone who reaches it call every method (SendMessage as
 * anyone, Deliver, Drain): only in dev mode or when explicitly allowed (grpc.allowUnauthenticated),
 * with a loud warning; otherwise the process does not start (ADR 0007). Dev mode is what serves dev
 * tokens (devTokensRefusal): `--dev` asked for on a public address or beside a JWKS URL is none, and
 * must not open the port either.
 */
export function admitUnauthenticatedPort(config: Config, log: Logger): void {
  if (config.grpc.allowUnauthenticated) {
    log.warn(
      "gRPC port open WITHOUT AUTHENTICATION (grpc.allowUnauthenticated): anyone who reaches it may call every method; only safe where a mesh admits callers",
    );
    return;
  }
  const refusal = devTokensRefusal(config);
  if (refusal !== undefined)
    throw new Error(
      `the gRPC port has no authentication: set grpc.keyFile, grpc.tokenAudience or grpc.tls.dir (docs/adr/0007), or start with --dev for development only (on loopback, with no auth.jwksUrl, auth.issuers or auth.secretFile)${config.auth.devTokens ? `; dev mode was asked for but does not apply: ${refusal}` : ""}`,
    );
  log.warn(
    "DEV MODE: gRPC port open WITHOUT AUTHENTICATION: anyone who reaches it may call every method (SendMessage as anyone, Deliver, Drain); never use --dev in production",
  );
}

const RETRY_DELAY_MIN_MS = 200;
const RETRY_DELAY_MAX_MS = 5_000;

export async function runProcess(
  role: RoleName,
  config: Config,
  log: Logger,
  start: RoleStarter,
  serves: readonly DescService[],
): Promise<RunningProcess> {
  // What clients' tokens are checked with, then the gRPC credentials: a process that may not or
  // cannot authenticate its clients, its port (or its calls) stops before it opens anything.
  if (role === "all" || role === "gateway") {
    const warning = checkClientKeys(config);
    if (warning !== undefined) log.warn(warning);
  }
  const policies = grpcPolicy(config, log);
  const tls = grpcTls(config, log);
  let guard: CallGuard | undefined;
  try {
    guard = servesGrpc(role, config) ? await grpcGuard(config, log, tls, policies) : undefined;
    if (servesGrpc(role, config) && !guard) admitUnauthenticatedPort(config, log);
  } catch (err) {
    tls?.close();
    throw err;
  }
  const metrics = createMetrics(role);
  const tracer = await startTracing(config, role, log);
  const owned: Array<{ close(): unknown }> = tls ? [tls] : [];
  // Every invariant violated in this process is counted (an alert fires on any) and logged.
  const stopCounting = onInvariantViolation((message) => {
    metrics.invariantViolations.inc();
    log.error("invariant violated", { message });
  });
  owned.push({ close: stopCounting });
  const checks: Array<() => string | undefined> = [];
  let phase: "starting" | "ready" | "stopping" = "starting";
  let waitingFor: string | undefined;
  let parts: RoleParts = {};
  let closing: Promise<void> | undefined;

  const notReady = (): string | undefined => {
    if (phase === "stopping") return "stopping";
    if (phase === "starting") return waitingFor ?? "starting";
    // A draining gateway takes no new connections: load balancers must send no one here.
    if (parts.gateway?.isDraining) return "draining";
    for (const check of checks) {
      const why = check();
      if (why !== undefined) return why;
    }
    return undefined;
  };
  metrics.setReadiness(() => notReady() === undefined);
  const http = await serveHttp({
    config,
    log,
    metrics,
    gateway: () => parts.gateway,
    servesClients: role === "all" || role === "gateway",
    notReady,
  });
  let grpcServer: Awaited<ReturnType<typeof serveGrpc>> | undefined;
  const stopping = new AbortController();
  const close = () =>
    (closing ??= (async () => {
      phase = "stopping";
      stopping.abort();
      grpcServer?.health.changed();
      // Clients first (they reconnect elsewhere), then the servers (no new calls), then what the role
      // opened, newest first (the router before the storage it writes to). Tracing last: it flushes
      // the spans of everything closed before it. One that fails does not keep the others open.
      const failed: unknown[] = [];
      for (const resource of [parts.gateway, grpcServer, http, ...owned.splice(0).reverse(), tracer]) {
        if (!resource) continue;
        try {
          await resource.close();
        } catch (err) {
          log.error("close failed", { err });
          failed.push(err);
        }
      }
      if (failed.length > 0) throw new AggregateError(failed, `${failed.length} resource(s) failed to close`);
    })());
  /** Closing after a failed start: the start's error is the one to report. */
  const closeQuietly = () => close().catch(() => undefined);

  let credential: ReturnType<typeof grpcCredential>;
  try {
    grpcServer = servesGrpc(role, config)
      ? await serveGrpc(config.http.host, config.grpc.port, {
          metrics: metrics.grpc,
          reflection: config.grpc.reflection,
          serves,
          serving: () => notReady() === undefined,
          credentials: tls?.serverCredentials,
          keepalive: { timeMs: config.grpc.keepaliveMs, timeoutMs: config.grpc.keepaliveTimeoutMs },
        })
      : undefined;
    credential = grpcCredential(config, log);
  } catch (err) {
    // The gRPC port taken, a credential file missing: the HTTP server already open would keep the
    // process alive, answering /healthz, so it never restarts. Everything opened closes.
    await closeQuietly();
    throw err;
  }
  if (grpcServer && guard) guardServer(grpcServer.server, guard);

  const ctx: RoleContext = {
    config,
    log,
    metrics,
    grpc: grpcServer?.server,
    grpcPort: grpcServer?.port ?? 0,
    httpPort: http.port,
    credential,
    policy: () => policies().policy,
    tls: tls && ((peer) => tls.channelTo(peer)),
    stopping: stopping.signal,
    own: (resource) => {
      owned.push(resource);
      return resource;
    },
    readiness: (check) => checks.push(check),
    retry: async (what, open, final) => {
      for (let attempt = 1; ; attempt++) {
        // A first attempt can take long (kafkajs retries a broker that refuses for ~20 s itself).
        waitingFor ??= `starting: ${what}`;
        try {
          const value = await open();
          waitingFor = undefined;
          return value;
        } catch (err) {
          if (phase === "stopping" || final?.(err)) throw err;
          const delay = Math.min(RETRY_DELAY_MAX_MS, RETRY_DELAY_MIN_MS * 2 ** Math.min(attempt - 1, 5));
          // Still "starting" to a reader of /readyz, with what it waits for: the error's first line
          // (some drivers put their inner errors' stacks in the message; the log has it all).
          waitingFor = `starting: ${what}: ${firstLine((err as Error).message ?? String(err))}`;
          log.warn(`${what} failed; retrying`, { attempt, retryInMs: delay, err });
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    },
    fatal: (err) => {
      log.error("storage failed; shutting down so that nothing is acknowledged that is not durable", { err });
      process.exitCode = 70;
      void closeQuietly();
      // The process ends once everything is closed; a close that hangs does not keep it (unref: the
      // timer alone keeps nothing alive).
      setTimeout(() => process.exit(70), config.shutdownTimeoutMs).unref();
    },
  };

  try {
    parts = await start(ctx);
    const neverAdded = grpcServer ? startingServicesOf(grpcServer.server) : [];
    if (neverAdded.length > 0)
      throw new Error(`role ${role} started without the services it declares: ${neverAdded.join(", ")}`);
  } catch (err) {
    await closeQuietly();
    throw err;
  }
  phase = "ready";
  grpcServer?.health.changed();
  parts.gateway?.onDrain(() => {
    log.info("gateway draining: not ready from now on");
    grpcServer?.health.changed();
  });
  return {
    role,
    httpPort: http.port,
    internalPort: http.internalPort,
    grpcPort: ctx.grpcPort,
    get gateway() {
      return parts.gateway;
    },
    metrics,
    close,
  };
}

/** A message's first line, at most 300 characters: what /readyz says of a failure. */
function firstLine(message: string): string {
  const line = message.split("\n", 1)[0] ?? "";
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
