/**
 * Role gateway: client WebSockets. Reads sync, history and membership from the stores directly and
 * appends sends to the log itself (ADR 0005); gets ids from the id service, relays typing and
 * receipts through the routers, reports heartbeats to the presence shards, registers push tokens
 * with push, and serves
 * GatewayService (Deliver from routers, Drain and Stats for the operator).
 */
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { addService } from "../lib/rpc.js";
import { peerClient, peerOptions, presencePeers } from "../process/peers.js";
import type { RoleStarter } from "../process/runtime.js";
import {
  advertiseAddress,
  announceGroupChanges,
  conversationRelays,
  conversations,
  openRoleStorage,
  requireDistributed,
  roleGateway,
} from "./shared.js";

export const startGateway: RoleStarter = async (ctx) => {
  const { config, log, metrics } = ctx;
  requireDistributed(config, "gateway", log);
  const address = advertiseAddress(config, ctx.grpcPort);
  const ids = ctx.own(peerClient(IdService, config.cluster.idTarget, "cluster.idTarget", peerOptions(ctx)));
  const router = ctx.own(
    peerClient(RouterService, config.cluster.routerTarget, "cluster.routerTarget", peerOptions(ctx)),
  );
  // A conversation's typing, receipt and group events all go through one router: in order.
  const relays = conversationRelays(ctx, router);
  const presence = ctx.own(presencePeers(config, peerOptions(ctx)));
  const push = ctx.own(
    peerClient(PushService, config.cluster.pushTarget, "cluster.pushTarget", peerOptions(ctx)),
  );
  const backends = await openRoleStorage(ctx, "gateway", { sequencer: false, appends: true });
  const convs = conversations(config, backends, ids);
  ctx.own(announceGroupChanges(convs, backends.membership, relays, log, metrics));
  const gateway = roleGateway(ctx, {
    backends,
    conversations: convs,
    relays,
    presence,
    push,
    advertiseAddress: address,
  });
  await gateway.announce();
  addService(ctx.grpc!, GatewayService, gateway.service());
  log.info("gateway started", { gatewayId: gateway.id, advertiseAddress: address });
  return { gateway };
};
