/**
 * Role all (the default, `npm start`): every service in one process, wired through the same service
 * clients the split roles use across processes, here with the in-process transport; on the embedded
 * backend (one LMDB file) or the distributed one. With grpc.port set, the same service instances are
 * served over gRPC too (one id generator: a second one would need a worker id of its own). Several
 * processes of role all on one distributed backend each need gRPC: the others' routers hand the
 * messages of its clients to its gateway through it (a router that meets a gateway it cannot reach
 * says so, router.ts).
 *
 * Presence is in memory: with several processes of role all on the distributed backend, each one's
 * presence knows only its own users' sessions and its own sessions' watches, unless
 * cluster.presenceTargets lists the processes' gRPC addresses in shard order (each its own
 * cluster.presenceShard): then this process's presence is one shard and its gateway and server API use
 * all of them, as split roles do.
 */
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { inProcessCaller } from "../grpc-auth/policy.js";
import { createIdService, type HighWaterStore } from "../id/index.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import { addService, inProcessClient, type ServiceClient } from "../lib/rpc.js";
import { Presence, presenceServiceImpl } from "../presence/index.js";
import { checkDistributedConfig, openBackends } from "../process/backends.js";
import { peerOptions, presencePeers } from "../process/peers.js";
import type { RoleStarter } from "../process/runtime.js";
import { providersFromConfig } from "../push/from-config.js";
import { pushFromConfig, pushServiceImpl } from "../push/index.js";
import { routerServiceImpl } from "../router/index.js";
import {
  advertiseAddress,
  announceGroupChanges,
  conversationRelays,
  conversations,
  roleGateway,
  roleRouter,
  serveChatService,
} from "./shared.js";

export const startAll: RoleStarter = async (ctx) => {
  const { config, log, metrics } = ctx;
  // Configuration that cannot work stops the start before storage opens (which may take long).
  providersFromConfig(config.push);
  if (config.backend === "distributed") checkDistributedConfig(config, log);
  // Shared presence is served to the other processes over gRPC: without it they could never reach
  // this process's shard (their users' presence would fail there), and this one would call itself
  // at an address nothing answers.
  if (config.cluster.presenceTargets.length > 0 && !ctx.grpc)
    throw new Error(
      "cluster.presenceTargets is set but gRPC is off: role all shares presence only over gRPC (set grpc.port, SWITCHBOARD_GRPC_PORT or --grpc-port, to this process's address in cluster.presenceTargets), or leave cluster.presenceTargets empty",
    );
  // Likewise the routers: the others pin conversations to this process's router at its address.
  if (config.cluster.routerTarget !== "" && !ctx.grpc)
    throw new Error(
      "cluster.routerTarget is set but gRPC is off: role all shares its router only over gRPC (set grpc.port, SWITCHBOARD_GRPC_PORT or --grpc-port, to this process's address in cluster.routerTarget), or leave cluster.routerTarget empty",
    );
  const open = () =>
    openBackends(
      config,
      log,
      metrics,
      {
        sequencer: config.kafka.sequencer,
        appends: true,
        provision: true,
        role: "all",
        httpPort: ctx.httpPort,
      },
      (err) => ctx.fatal(err),
    );
  // Kafka and Cassandra may come up after this process (a cluster's first start, a restart during
  // their outage): it waits for them, live and not ready, as the split roles do, instead of exiting
  // into a restart backoff that can outlast the outage. What no wait cures ends the start as before:
  // the embedded store's refusals (its data dir in use, of a newer format), and storage that answers
  // but does not fit the configuration (a changed partition count, a changed migration, credentials
  // refused).
  const backends = ctx.own(
    config.backend === "distributed"
      ? await ctx.retry("open storage", open, isConfigurationError)
      : await open(),
  );
  if ("unreachable" in backends) ctx.readiness(() => (backends.unreachable as () => string | undefined)());

  // The time ids were issued up to is kept in the store (embedded: the data file; distributed: a
  // Cassandra row per worker id), so a restart never reissues one.
  const idImpl = createIdService(
    config.id.workerId,
    undefined,
    (backends as { idHighWater?: HighWaterStore }).idHighWater,
  );
  // Each in-process client calls as the role whose code uses it, checked like a cluster's calls.
  const asGateway = inProcessCaller("role:gateway");
  const asRouter = inProcessCaller("role:router");
  const ids = inProcessClient(IdService, idImpl, asGateway);
  const push = ctx.own(
    pushFromConfig(
      config,
      backends.devices,
      backends.settings,
      {
        receipts: backends.receipts,
        jobs: backends.pushJobs,
        queue: backends.pushQueue,
        deadLetters: backends.pushDeadLetters,
        // The router (below) knows every session of this single process.
        online: async (userId) => router.lookup(userId).length > 0,
      },
      log,
      metrics,
    ),
  );
  // Deliveries a killed process left in the embedded store go out again.
  await push.recover();
  const pushImpl = pushServiceImpl(push, backends.devices);
  let presenceRouter: ServiceClient<typeof RouterService> | undefined;
  const presence = ctx.own(
    new Presence({
      offlineAfterMs: config.presence.offlineAfterMs,
      store: backends.presence,
      // One router here: a user's changes are relayed in order.
      router: () => presenceRouter!,
      log,
      metrics: metrics.presence,
    }),
  );
  const presenceImpl = presenceServiceImpl(presence, backends.presence);
  // Several processes of role all share presence only through cluster.presenceTargets (see above).
  const presenceShards =
    config.cluster.presenceTargets.length > 0 ? ctx.own(presencePeers(config, peerOptions(ctx))) : undefined;
  if (!presenceShards && config.backend === "distributed" && ctx.grpc)
    log.warn(
      "presence is this process's own: with more than one process of role all, set cluster.presenceTargets (every process's gRPC address, in shard order, and cluster.presenceShard in each), or users connected to different processes do not see each other's presence",
    );

  const router = roleRouter(ctx, backends, inProcessClient(PushService, pushImpl, asRouter));
  const convs = conversations(config, backends, ids, true);
  const routerImpl = routerServiceImpl(router, convs, backends.messages, config.sync.pageSizeMax);
  // Several processes sharing distributed storage pin each conversation's events to one of their
  // routers (cluster.routerTarget); one process relays them all through its own, in order.
  const relays = conversationRelays(ctx, inProcessClient(RouterService, routerImpl, asGateway));
  ctx.own(announceGroupChanges(convs, backends.membership, relays, log, metrics));
  presenceRouter = inProcessClient(RouterService, routerImpl, inProcessCaller("role:presence"));
  // Shared presence: this process's shard is served before the gateway's first lease renewal
  // (announce) calls every shard, this one among them over gRPC (it relays through the router above).
  if (ctx.grpc && presenceShards) addService(ctx.grpc, PresenceService, presenceImpl);

  const gateway = roleGateway(ctx, {
    backends,
    conversations: convs,
    relays,
    presence: presenceShards ?? inProcessClient(PresenceService, presenceImpl, asGateway),
    push: inProcessClient(PushService, pushImpl, asGateway),
    advertiseAddress: ctx.grpc ? advertiseAddress(config, ctx.grpcPort) : "",
  });
  const gatewayImpl = gateway.service();
  router.attachGateway(gateway.id, inProcessClient(GatewayService, gatewayImpl, asRouter));
  await gateway.announce();
  await router.start();
  ctx.own(router);
  // Last: joining the push group may wait for a killed process's member to time out, and the
  // message path must not wait for that (distributed backend; embedded: nothing to consume).
  await push.consumeQueue();

  if (ctx.grpc) {
    addService(ctx.grpc, IdService, idImpl);
    addService(ctx.grpc, RouterService, routerImpl);
    if (!presenceShards) addService(ctx.grpc, PresenceService, presenceImpl);
    addService(ctx.grpc, PushService, pushImpl);
    addService(ctx.grpc, GatewayService, gatewayImpl);
    serveChatService(ctx, ctx.grpc, {
      conversations: convs,
      membership: backends.membership,
      messages: backends.messages,
      log: backends.log,
      router,
      presence: presenceShards ?? inProcessClient(PresenceService, presenceImpl, asRouter),
      push: inProcessClient(PushService, pushImpl, asRouter),
    });
  }
  log.info("switchboard started", {
    dataDir: config.dataDir,
    backend: backends.name,
    grpcPort: ctx.grpcPort,
  });
  return { gateway };
};

/**
 * A refusal of the configuration itself, or a build that cannot run (a module that does not load, a
 * name that does not exist): starting again unchanged cannot succeed.
 */
export function isConfigurationError(err: unknown): boolean {
  if (err instanceof SwitchboardError)
    return err.code === Code.INVALID_ARGUMENT || err.code === Code.FAILED_PRECONDITION;
  if (err instanceof SyntaxError || err instanceof ReferenceError) return true;
  return err instanceof Error && err.name === "KafkaJSSASLAuthenticationError";
}
