/**
 * Role presence: one shard of the presence state (users with hash(user) mod shards = this shard's
 * number; presence/shards.ts). Changes reach subscribers through a router's Relay: every change of one
 * user through the same router (process/relay-routes.ts), so that they arrive in order.
 */
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { addService } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { peerClient, peerOptions, routerRelays } from "../process/peers.js";
import type { RoleStarter } from "../process/runtime.js";
import { openRoleStorage, requireDistributed } from "./shared.js";

export const startPresence: RoleStarter = async (ctx) => {
  const { config, log } = ctx;
  requireDistributed(config, "presence", log);
  const peers = peerOptions(ctx);
  const router = ctx.own(
    peerClient(RouterService, config.cluster.routerTarget, "cluster.routerTarget", peers),
  );
  const routes = ctx.own(routerRelays(config, peers, router, log));
  const backends = await openRoleStorage(ctx, "presence", { sequencer: false, appends: false });
  const presence = ctx.own(
    new Presence({
      offlineAfterMs: config.presence.offlineAfterMs,
      store: backends.presence,
      router: (userId) => routes.forKey(userId),
      log: log.child({ shard: config.cluster.presenceShard }),
      metrics: ctx.metrics.presence,
    }),
  );
  addService(ctx.grpc!, PresenceService, presenceServiceImpl(presence, backends.presence));
  return {};
};
