/** Clients of the services a role calls in other processes, from the `cluster.*` targets. */
import type { DescService } from "@bufbuild/protobuf";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { type RoleName as AuthRole, ROLE_NAMES } from "../grpc-auth/policy.js";
import type { RoleChannel } from "../grpc-auth/tls.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { GrpcMetrics } from "../lib/metrics.js";
import { type GrpcClientOptions, grpcClient, type Keepalive, type ServiceClient } from "../lib/rpc.js";
import { shardedPresenceClient } from "../presence/shards.js";
import type { GatewayClient } from "../router/gateway-link.js";
import { type Relayer, RelayRoutes } from "./relay-routes.js";

export type PeerClient<S extends DescService> = ServiceClient<S> & { close(): void };

/**
 * What every client of another process gets: its metrics, this process's credential, and with mTLS
 * the credentials that present its certificate and check the server's role (ADR 0007).
 */
export interface PeerOptions {
  metrics: GrpcMetrics;
  bearer?: (() => string | undefined) | undefined;
  tls?: ((role: AuthRole) => RoleChannel) | undefined;
  /** grpc.keepaliveMs and grpc.keepaliveTimeoutMs. */
  keepalive: Keepalive;
}

const clientOptions = (o: PeerOptions, spread: boolean, service: DescService): GrpcClientOptions => {
  const tls = o.tls?.(roleServing(service));
  return {
    spread,
    metrics: o.metrics,
    keepalive: o.keepalive,
    ...(o.bearer ? { bearer: o.bearer } : {}),
    ...(tls ? { credentials: tls.credentials, serverName: tls.serverName } : {}),
  };
};

/** The role whose servers serve `service` (`switchboard.<role>.v1.…`): the identity mTLS expects. */
export function roleServing(service: DescService): AuthRole {
  const role = /^switchboard\.([a-z]+)\.v1\./.exec(service.typeName)?.[1];
  if (!role || !(ROLE_NAMES as readonly string[]).includes(role))
    throw new Error(`${service.typeName} is not served by a role (switchboard.<role>.v1.*)`);
  return role as AuthRole;
}

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
  return grpcClient(service, target, clientOptions(options, true, service));
}

/** One client per presence shard, behind one PresenceService interface (presence/shards.ts). */
export function presencePeers(config: Config, options: PeerOptions): PeerClient<typeof PresenceService> {
  const targets = config.cluster.presenceTargets;
  if (targets.length === 0)
    throw new Error("cluster.presenceTargets is required by this role: one gRPC target per presence shard");
  const shards = targets.map((t) =>
    grpcClient(PresenceService, t, clientOptions(options, true, PresenceService)),
  );
  const close = () => {
    for (const shard of shards) shard.close();
  };
  return { ...shardedPresenceClient(shards), close };
}

/**
 * The routers behind `cluster.routerTarget`, each event key (a user, a conversation) pinned to one
 * of them so that its events arrive in order (relay-routes.ts); `fallback` (the client of the whole
 * target, or a router's own) while no router address is known.
 */
export function routerRelays(
  config: Config,
  options: PeerOptions,
  fallback: Relayer,
  log: Logger,
): RelayRoutes {
  return new RelayRoutes({
    target: config.cluster.routerTarget,
    fallback,
    log,
    // One router by address, like the peer client but pinned to that router (no spreading).
    dial: (address) => grpcClient(RouterService, address, clientOptions(options, false, RouterService)),
  });
}

/**
 * How routers reach a gateway of another process: one plain channel to its advertised address,
 * pinged every `keepaliveMs` (router.deliverKeepaliveMs): live delivery rides on it.
 */
export function gatewayDialer(options: PeerOptions, keepaliveMs: number): (address: string) => GatewayClient {
  const o = { ...options, keepalive: { ...options.keepalive, timeMs: keepaliveMs } };
  return (address) => grpcClient(GatewayService, address, clientOptions(o, false, GatewayService));
}

/** The PeerOptions of a role's clients: its metrics, its credential and its mTLS credentials. */
export function peerOptions(ctx: {
  config: Config;
  metrics: { grpc: GrpcMetrics };
  credential: (() => string | undefined) | undefined;
  tls?: ((role: AuthRole) => RoleChannel) | undefined;
}): PeerOptions {
  const { keepaliveMs, keepaliveTimeoutMs } = ctx.config.grpc;
  return {
    metrics: ctx.metrics.grpc,
    bearer: ctx.credential,
    tls: ctx.tls,
    keepalive: { timeMs: keepaliveMs, timeoutMs: keepaliveTimeoutMs },
  };
}
