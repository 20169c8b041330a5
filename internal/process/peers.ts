/** Clients of the services a role calls in other processes, from the `cluster.*` targets. */
import type { DescService } from "@bufbuild/protobuf";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { Config } from "../lib/config.js";
import type { GrpcMetrics } from "../lib/metrics.js";
import { grpcClient, type ServiceClient } from "../lib/rpc.js";
import { shardedPresenceClient } from "../presence/shards.js";
import type { GatewayClient } from "../router/gateway-link.js";

export type PeerClient<S extends DescService> = ServiceClient<S> & { close(): void };

/** What every client of another process gets: its metrics, and this process's credential (ADR 0007). */
export interface PeerOptions {
  metrics: GrpcMetrics;
  bearer?: (() => string | undefined) | undefined;
}

const clientOptions = (o: PeerOptions, spread: boolean) => ({
  spread,
  metrics: o.metrics,
  ...(o.bearer ? { bearer: o.bearer } : {}),
});

/**
 * A client spreading calls over every replica behind `target` (see lib/rpc.ts grpcClient), counted
 * in the grpc_client_* metrics.
 */
export function peerClient<S extends DescService>(
  service: S,
  target: string,
  setting: string,
  options: PeerOptions,
): PeerClient<S> {
  if (!target)
    throw new Error(
      `${setting} is required by this role: the gRPC target of the ${service.name} (e.g. dns:///name:port or ipv4:host:port,host:port)`,
    );
  return grpcClient(service, target, clientOptions(options, true));
}

/** One client per presence shard, behind one PresenceService interface (presence/shards.ts). */
export function presencePeers(config: Config, options: PeerOptions): PeerClient<typeof PresenceService> {
  const targets = config.cluster.presenceTargets;
  if (targets.length === 0)
    throw new Error("cluster.presenceTargets is required by this role: one gRPC target per presence shard");
  const shards = targets.map((t) => grpcClient(PresenceService, t, clientOptions(options, true)));
  const close = () => {
    for (const shard of shards) shard.close();
  };
  return { ...shardedPresenceClient(shards), close };
}

/** How routers reach a gateway of another process: one plain channel to its advertised address. */
export function gatewayDialer(options: PeerOptions): (address: string) => GatewayClient {
  return (address) => grpcClient(GatewayService, address, clientOptions(options, false));
}

/** The PeerOptions of a role's clients: its metrics and its credential. */
export function peerOptions(ctx: {
  metrics: { grpc: GrpcMetrics };
  credential: (() => string | undefined) | undefined;
}): PeerOptions {
  return { metrics: ctx.metrics.grpc, bearer: ctx.credential };
}
