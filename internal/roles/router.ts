/**
 * Role router: owns its share of the inbox topic's partitions, writes inbox entries, and
 * fans out over one Deliver stream per gateway, dialled on demand at the address the gateway's
 * session records carry. Serves RouterService (Relay from gateways and presence) and the server API
 * for backend services (ChatService).
 */
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { inProcessCaller } from "../grpc-auth/policy.js";
import { addService, inProcessClient } from "../lib/rpc.js";
import { peerClient, peerOptions, presencePeers } from "../process/peers.js";
import type { RoleStarter } from "../process/runtime.js";
import { routerServiceImpl } from "../router/index.js";
import {
  announceGroupChanges,
  conversationRelays,
  conversations,
  openRoleStorage,
  requireDistributed,
  roleRouter,
  serveChatService,
} from "./shared.js";

export const startRouter: RoleStarter = async (ctx) => {
  const { config, log, metrics } = ctx;
  requireDistributed(config, "router", log);
  const ids = ctx.own(peerClient(IdService, config.cluster.idTarget, "cluster.idTarget", peerOptions(ctx)));
  const push = ctx.own(
    peerClient(PushService, config.cluster.pushTarget, "cluster.pushTarget", peerOptions(ctx)),
  );
  const presence = ctx.own(presencePeers(config, peerOptions(ctx)));
  const backends = await openRoleStorage(ctx, "router", { sequencer: false, appends: true });
  const router = roleRouter(ctx, backends, push);
  await router.start();
  ctx.own(router);
  const convs = conversations(config, backends, ids);
  const routerImpl = routerServiceImpl(router, convs, backends.messages, config.sync.pageSizeMax);
  // A backend's group change is relayed like a member's, by the router its conversation is pinned to.
  const relays = conversationRelays(
    ctx,
    inProcessClient(RouterService, routerImpl, inProcessCaller("role:router")),
  );
  ctx.own(announceGroupChanges(convs, backends.membership, relays, log, metrics));
  addService(ctx.grpc!, RouterService, routerImpl);
  serveChatService(ctx, ctx.grpc!, {
    conversations: convs,
    membership: backends.membership,
    messages: backends.messages,
    log: backends.log,
    router,
    presence,
    push,
  });
  return {};
};
