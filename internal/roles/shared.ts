/** Pieces more than one role builds the same way. */
import { hostname } from "node:os";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { ServerFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { type ChatServiceDeps, chatServiceImpl } from "../api/index.js";
import type { DistributedBackends } from "../backends/distributed/index.js";
import type { MembershipStore, MessageLog } from "../backends/types.js";
import { Conversations, IdPool } from "../conversations/index.js";
import { toWireConversation } from "../conversations/wire.js";
import { Gateway, type GatewayOptions } from "../gateway/index.js";
import { createVerifier } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import { EVENT_RELAY_RETRIES, RetryLater } from "../lib/retry-later.js";
import { addService, type ServiceClient } from "../lib/rpc.js";
import { type BackendUse, checkDistributedConfig, openDistributed } from "../process/backends.js";
import { gatewayDialer, peerOptions, routerRelays } from "../process/peers.js";
import type { Relayer } from "../process/relay-routes.js";
import type { RoleContext } from "../process/runtime.js";
import { Router } from "../router/index.js";
import type { RouterOptions } from "../router/router.js";

/**
 * The conversations service of a role. `ids`: the id service's client; `idsInProcess` when it runs in
 * this process (role all), whose pool needs no reserve for the id service's restarts.
 */
export function conversations(
  config: Config,
  stores: { membership: MembershipStore; log: MessageLog },
  ids: ServiceClient<typeof IdService>,
  idsInProcess = false,
): Conversations {
  const pool = new IdPool(ids, config.id.batchSize, idsInProcess ? { reserveMs: 0 } : {});
  return new Conversations(stores.membership, stores.log, pool, {
    bodyCharsMax: config.gateway.bodyCharsMax,
    membersMax: config.groups.membersMax,
    pullThreshold: config.groups.pullThreshold,
    nameCharsMax: config.groups.nameCharsMax,
  });
}

/** The router relay to use for each conversation (its id the key). */
export type ConversationRelays = { forKey(key: string): Relayer };

/**
 * Where a process relays a conversation's events (typing, receipts, group changes: ADR 0005): through
 * the router that cluster.routerTarget's routes pin the conversation to, so that they arrive in
 * order whichever process made them (a member's change through a gateway, a backend's through the
 * server API of any router). `fallback` takes them while no router address is known (a gateway's
 * client of the whole target, a router's own), and all of them with no target set (role all: this
 * process's own router, the only one it knows).
 */
export function conversationRelays(ctx: RoleContext, fallback: Relayer): ConversationRelays {
  if (ctx.config.cluster.routerTarget === "") return { forKey: () => fallback };
  return ctx.own(routerRelays(ctx.config, peerOptions(ctx), fallback, ctx.log));
}

/**
 * Relays each change of a group to its members' devices (the client protocol's `conversation` event,
 * best effort like typing: a client that misses it sees the change in its next listConversations).
 * A relay that fails (every router restarting) is tried again for about 30 s, unless a newer change
 * of the same group was relayed since: a late event never shows a group as it was before another.
 * Close it with the role: waiting retries are given up.
 */
export function announceGroupChanges(
  convs: Conversations,
  membership: Pick<MembershipStore, "members">,
  relays: ConversationRelays,
  log: Logger,
  metrics: Pick<Metrics, "eventRelaysDroppedTotal">,
): { close(): Promise<void> } {
  const retries = new RetryLater(EVENT_RELAY_RETRIES);
  convs.onGroupChange((group, audience) => {
    const frame: MessageInitShape<typeof ServerFrameSchema> = {
      kind: {
        case: "conversation",
        // Taken now, not at a retry: a client keeps the newest change by it (client.proto).
        value: { conversation: toWireConversation(group), changedAtMs: BigInt(Date.now()) },
      },
    };
    retries.run(
      async () => {
        const userIds = audience === "members" ? await membership.members(group.id) : [...audience];
        return relays.forKey(group.id).relay({ userIds, frame });
      },
      (reason, err, attempts) => {
        metrics.eventRelaysDroppedTotal.inc({ event: "conversation", reason });
        if (reason === "failed")
          log.warn("group change not relayed to its members", { conversationId: group.id, attempts, err });
      },
      group.id,
    );
  });
  return { close: async () => retries.close() };
}

/**
 * The router of role router or all, which dials a gateway of another process at the address the
 * gateway advertised, like a split cluster's (role all: another all-in-one process on the same
 * distributed storage, gRPC on).
 */
export function roleRouter(
  ctx: RoleContext,
  stores: Pick<RouterOptions, "log" | "membership" | "inbox" | "routing">,
  push: RouterOptions["push"],
): Router {
  const { config } = ctx;
  return new Router({
    log: stores.log,
    membership: stores.membership,
    inbox: stores.inbox,
    routing: stores.routing,
    push,
    dialGateway: gatewayDialer(peerOptions(ctx), config.router.deliverKeepaliveMs),
    streamQueueBytesMax: config.router.streamQueueBytesMax,
    logger: ctx.log,
    metrics: ctx.metrics,
  });
}

/**
 * Serves the server API for backend services (ChatService) on `grpc`: under the role's policy, with the
 * configured page and body bounds, each call starting a trace of its own.
 */
export function serveChatService(
  ctx: RoleContext,
  grpc: NonNullable<RoleContext["grpc"]>,
  parts: Pick<
    ChatServiceDeps,
    "conversations" | "membership" | "messages" | "log" | "router" | "presence" | "push"
  >,
): void {
  const { config } = ctx;
  addService(
    grpc,
    ChatService,
    chatServiceImpl({
      ...parts,
      policy: ctx.policy,
      pageSizeMax: config.sync.pageSizeMax,
      pageBytesMax: config.sync.pageBytesMax,
      bodyCharsMax: config.gateway.bodyCharsMax,
      metrics: ctx.metrics,
      stopping: ctx.stopping,
    }),
    { startsTraces: true },
  );
}

/**
 * The gateway of role gateway or all: named by gatewayId, of an epoch this start began, and verifying
 * tokens as auth.* says; each conversation's events are relayed through `relays`.
 */
export function roleGateway(
  ctx: RoleContext,
  parts: Pick<GatewayOptions, "backends" | "conversations" | "presence" | "push" | "advertiseAddress"> & {
    relays: ConversationRelays;
  },
): Gateway {
  const { config, log } = ctx;
  const { relays, ...services } = parts;
  return new Gateway({
    config,
    log,
    metrics: ctx.metrics,
    ...services,
    relays: (conversationId) => relays.forKey(conversationId),
    verify: createVerifier({ dataDir: config.dataDir, ...config.auth, log }),
    gatewayId: gatewayId(config),
    gatewayEpoch: Date.now(),
  });
}

/**
 * This gateway's id in the routing table: configured (in Kubernetes, the Pod name), or else its host
 * name, listening address and HTTP port, which a gateway restarted in place keeps, so that its start
 * declares its predecessor's sessions gone (Gateway.announce): with the process id in it, a crashed
 * gateway's sessions stayed "up" at every router, and their users got no push notification. Two live
 * gateways cannot listen on one address and port of a host; only one on a random port (0) falls
 * back to the process id. Machines that report the same host name need gateway.id.
 */
export function gatewayId(config: Config): string {
  if (config.gateway.id) return config.gateway.id;
  const { host, port } = config.http;
  return port !== 0 ? `${hostname()}:${host}:${port}` : `${hostname()}-${process.pid}`;
}

const WILDCARD_HOSTS = new Set(["0.0.0.0", "::", "[::]", ""]);

/** Where routers in other processes reach this gateway's gRPC server. */
export function advertiseAddress(config: Config, grpcPort: number): string {
  if (config.gateway.advertiseAddress) return config.gateway.advertiseAddress;
  if (WILDCARD_HOSTS.has(config.http.host))
    throw new Error(
      `gateway.advertiseAddress is required when http.host is ${JSON.stringify(config.http.host)}: routers must know an address that reaches this gateway (in Kubernetes: the Pod IP)`,
    );
  return `${config.http.host}:${grpcPort}`;
}

/**
 * The role needs the distributed backend (only role all runs on the embedded one), configured so that
 * it can work: checked before the role's retry loop, which retries only what may heal (storage down).
 */
export function requireDistributed(config: Config, role: string, log: Logger): void {
  if (config.backend !== "distributed")
    throw new Error(
      `--role ${role} needs backend distributed (Kafka + Cassandra): the embedded backend lives in one process; use --role all`,
    );
  checkDistributedConfig(config, log);
}

/**
 * A split role's storage, whose topics and schema it only checks (`switchboard provision`, which the
 * operator runs, makes them): opened once Kafka and Cassandra answer (the role waits for them, live and
 * not ready), and the process is ready only while Cassandra is reachable. Closed with the role.
 */
export async function openRoleStorage(
  ctx: RoleContext,
  role: string,
  use: Pick<BackendUse, "sequencer" | "appends">,
): Promise<DistributedBackends> {
  const backends = ctx.own(
    await ctx.retry("open storage", () =>
      openDistributed(ctx.config, ctx.log, ctx.metrics, {
        ...use,
        provision: false,
        role,
        httpPort: ctx.httpPort,
      }),
    ),
  );
  ctx.readiness(() => backends.unreachable());
  return backends;
}
