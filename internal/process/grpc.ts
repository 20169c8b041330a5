/**
 * Every process's gRPC server: bound first (so a gateway knows the port it advertises before it
 * exists), services added by the role afterwards (grpc-js looks handlers up per call), shut down
 * gracefully.
 */
import * as grpc from "@grpc/grpc-js";

export interface RunningGrpc {
  port: number;
  server: grpc.Server;
  close(): Promise<void>;
}

/** Messages larger than this are refused (a Deliver request carries at most one 1 MiB frame). */
const MESSAGE_BYTES_MAX = 4 * 1024 * 1024;
/** A graceful shutdown waits this long for calls in flight, then cancels them. */
const SHUTDOWN_GRACE_MS = 5_000;

export async function serveGrpc(host: string, port: number): Promise<RunningGrpc> {
  const server = new grpc.Server({ "grpc.max_receive_message_length": MESSAGE_BYTES_MAX });
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(new Error(`gRPC server: cannot bind ${host}:${port}: ${err.message}`)) : resolve(p),
    ),
  );
  return {
    port: bound,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        // Long-lived streams (Deliver) never end by themselves: cancel them after the grace period.
        const force = setTimeout(() => server.forceShutdown(), SHUTDOWN_GRACE_MS);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
