/**
 * Role presence: one shard of the presence state (users with hash(user) mod shards = this shard's
 * number; presence/shards.ts). Changes reach subscribers through a router's Relay: every change of one
 * user through the same router (presence/relay-routes.ts), so that they arrive in order.
 */
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { addService, grpcClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { RelayRoutes } from "../presence/relay-routes.js";
import { openDistributed } from "../process/backends.js";
import { peerClient, peerOptions } from "../process/peers.js";
import type { RoleStarter } from "../process/runtime.js";
import { requireDistributed } from "./shared.js";

export const startPresence: RoleStarter = async (ctx) => {
  const { config, log } = ctx;
  requireDistributed(config, "presence", log);
  const peers = peerOptions(ctx);
  const router = ctx.own(
    peerClient(RouterService, config.cluster.routerTarget, "cluster.routerTarget", peers),
  );
  // One router by address, like the peer client above but pinned to that router (no spreading).
  const tls = peers.tls?.("router");
  const routes = ctx.own(
    new RelayRoutes({
      target: config.cluster.routerTarget,
      fallback: router,
      log,
      dial: (address) =>
        grpcClient(RouterService, address, {
          metrics: peers.metrics,
          keepalive: peers.keepalive,
          ...(peers.bearer ? { bearer: peers.bearer } : {}),
          ...(tls ? { credentials: tls.credentials, serverName: tls.serverName } : {}),
        }),
    }),
  );
  const backends = ctx.own(
    await ctx.retry("open storage", () =>
      openDistributed(config, log, ctx.metrics, {
        sequencer: false,
        appends: false,
        provision: false,
        role: "presence",
        httpPort: ctx.httpPort,
      }),
    ),
  );
  ctx.readiness(() => backends.unreachable());
  const presence = ctx.own(
    new Presence({
      offlineAfterMs: config.presence.offlineAfterMs,
      store: backends.presence,
      router: (userId) => routes.forUser(userId),
      log: log.child({ shard: config.cluster.presenceShard }),
      metrics: ctx.metrics.presence,
    }),
  );
  addService(ctx.grpc!, PresenceService, presenceServiceImpl(presence, backends.presence));
  return {};
};
