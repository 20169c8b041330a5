/**
 * Every process's gRPC server: bound first (so a gateway knows the port it advertises before it
 * exists), services added by the role afterwards (grpc-js looks handlers up per call; until then
 * they answer UNAVAILABLE), shut down gracefully. It always serves the standard health service (in
 * step with /readyz) and, when grpc.reflection is on, server reflection; every call is counted in
 * the grpc_server_* metrics.
 */
import type { DescService } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import type { GrpcMetrics } from "../lib/metrics.js";
import {
  addService,
  addStartingService,
  instrumentServer,
  type Keepalive,
  servicesOf,
  startingServicesOf,
} from "../lib/rpc.js";
import { Health, HealthService } from "./health.js";
import { reflectionImpl, ServerReflectionV1, ServerReflectionV1alpha } from "./reflection.js";

export interface RunningGrpc {
  port: number;
  server: grpc.Server;
  /** The health service: `changed()` tells Watch streams at once that readiness changed. */
  health: HealthService;
  close(): Promise<void>;
}

export interface GrpcServerOptions {
  metrics: GrpcMetrics;
  /** Serve grpc.reflection.v1 and v1alpha (grpc.reflection). */
  reflection: boolean;
  /** The process is ready: what the health service reports for the server and each service. */
  serving: () => boolean;
  /**
   * The services the role will add once started: until then their calls are answered UNAVAILABLE
   * ("starting"), which callers retry, instead of UNIMPLEMENTED.
   */
  serves?: readonly DescService[] | undefined;
  /** What the port binds with (mTLS: grpc-auth/tls.ts); plaintext without. */
  credentials?: grpc.ServerCredentials | undefined;
  /**
   * Pings callers' connections too (grpc.keepaliveMs): a caller gone silently has its calls ended.
   * Default: grpc-js's (no pings for two hours).
   */
  keepalive?: Keepalive | undefined;
}

/** Messages larger than this are refused (a Deliver request carries at most one 1 MiB frame). */
const MESSAGE_BYTES_MAX = 4 * 1024 * 1024;
/** A graceful shutdown waits this long for calls in flight, then cancels them. */
const SHUTDOWN_GRACE_MS = 5_000;

export async function serveGrpc(
  host: string,
  port: number,
  options: GrpcServerOptions,
): Promise<RunningGrpc> {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MESSAGE_BYTES_MAX,
    ...(options.keepalive
      ? {
          "grpc.keepalive_time_ms": options.keepalive.timeMs,
          "grpc.keepalive_timeout_ms": options.keepalive.timeoutMs,
        }
      : {}),
  });
  instrumentServer(server, options.metrics);
  const health = new HealthService({
    serving: options.serving,
    services: () => servicesOf(server),
    starting: () => startingServicesOf(server),
  });
  addService(server, Health, health.impl());
  if (options.reflection) {
    const reflection = reflectionImpl(() => servicesOf(server));
    addService(server, ServerReflectionV1, reflection);
    addService(server, ServerReflectionV1alpha, reflection);
  }
  for (const service of options.serves ?? []) addStartingService(server, service);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `${host}:${port}`,
      options.credentials ?? grpc.ServerCredentials.createInsecure(),
      (err, p) =>
        err ? reject(new Error(`gRPC server: cannot bind ${host}:${port}: ${err.message}`)) : resolve(p),
    ),
  );
  return {
    port: bound,
    server,
    health,
    close: () =>
      new Promise<void>((resolve) => {
        // Watch streams end with a last NOT_SERVING; Deliver and StreamEvents streams never end by
        // themselves: cancel them after the grace period. Then the close is over, whether or not
        // grpc-js calls tryShutdown back (it waits for every session's close event, which a session
        // destroyed mid-stream does not always emit), so that a stop never hangs here.
        health.close();
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, SHUTDOWN_GRACE_MS);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
