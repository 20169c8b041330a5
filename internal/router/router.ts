/**
 * The router: consumes the message log, writes each recipient's inbox entry (durable, idempotent),
 * then hands the message to every gateway that holds a device of a recipient over one long-lived
 * Deliver stream per gateway (no unary RPC per message), and asks push to notify recipients with
 * no device online. It keeps the whole user→gateway table in memory, fed by routing events.
 *
 * Order: batches arrive in per-conversation order and are routed one after another, and each
 * gateway stream is FIFO, so a user sees a conversation in seq order. Inbox entries are written
 * before delivery, so a message a slow or reconnecting device misses is always found by sync. With
 * the distributed log the inbox entries are written by the owner of the user's inbox partition
 * (ADR 0002), and the router gets the messages with their cursors (log.deliveries).
 *
 * A pull conversation's message (ADR 0010) has no inbox entries and no recipients: the router sends
 * it to the conversation's members who are online (PullAudiences ∩ its session table), with cursor 0,
 * and notifies nobody offline (they see the conversation's unread count and fetch it by seq).
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import type { DeliverRequest, DeliverRequestSchema } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import type { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import type {
  Closeable,
  InboxDelivery,
  InboxStore,
  LoggedMessage,
  MembershipStore,
  MessageLog,
  RoutingEvents,
  SessionEvent,
  StoredMessage,
} from "../backends/types.js";
import { directMembers, toWireMessage } from "../conversations/index.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import { RetryLater } from "../lib/retry-later.js";
import type { ServiceClient } from "../lib/rpc.js";
import { carrierOf, context, startSpan, trace, tracing } from "../lib/tracing.js";
import { type DeliverInit, type GatewayClient, GatewayLink } from "./gateway-link.js";
import { PullAudiences } from "./pull-audiences.js";
import { RecentRecipients } from "./recent-recipients.js";

export const CONSUMER_GROUP = "router";
const NO_AUDIENCES: ReadonlyMap<string, ReadonlySet<string>> = new Map();
/** Member-list reads in flight per routed batch. */
const MEMBER_READS_CONCURRENT = 32;
/**
 * A session's "up" that reaches this router later than this after it was published has likely gone
 * live on its gateway first (its client synced meanwhile): its inbox is checked once. Below it the
 * table learns of a session in about the time a client takes to sync; checking every new session
 * would cost an inbox read per connect. (The lateness compares the gateway's clock, which stamped
 * the record, with this router's.)
 */
const ROUTING_LATE_RECHECK_MS = 100;
/**
 * A session that reaches the table sooner is checked only if its user was handed a message within
 * at least this long (up to about three times it): a message routed between the session's
 * publication and now. The window is ten times the lateness above, so a gateway clock up to ~900 ms
 * ahead of this router's is covered too.
 */
const RECENT_RECIPIENTS_WINDOW_MS = 1_000;

/**
 * A failed push.notify of an offline recipient is asked again after each of these waits, then given
 * up: push unavailable for a moment, a deadline passed, its queue write failed. (The message itself
 * is in the inbox either way; only the notification would be lost.)
 */
const NOTIFY_RETRY_DELAYS_MS = [200, 1_000, 5_000];
/**
 * Notifications waiting to be asked again, at most: through a push outage a busy router would hold
 * one per offline recipient of every message. Past it a failed notification is dropped (counted).
 */
const NOTIFY_RETRIES_WAITING_MAX = 10_000;
type NotifyInit = Parameters<ServiceClient<typeof PushService>["notify"]>[0];

interface SessionRoute {
  userId: string;
  gatewayId: string;
  gatewayEpoch: number;
}

/** Where a gateway of another process is reached (from its sessions' up records). */
interface GatewayAddress {
  address: string;
  epoch: number;
}

export interface RouterOptions {
  log: MessageLog;
  membership: MembershipStore;
  inbox: InboxStore;
  routing: RoutingEvents;
  push: ServiceClient<typeof PushService>;
  /** A Deliver client for a gateway in another process, by its advertised host:port. */
  dialGateway: (address: string) => GatewayClient;
  /** Bytes queued per gateway stream before its events are dropped (clients recover by sync). */
  streamQueueBytesMax: number;
  logger: Logger;
  metrics: Metrics;
}

/** Attributes of a message's `route` span. */
function routeAttributes(m: StoredMessage) {
  return {
    "switchboard.conversation.id": m.conversationId,
    "switchboard.message.id": m.messageId,
    "switchboard.seq": m.seq,
  };
}

export class Router {
  private readonly sessions = new Map<string, SessionRoute>();
  private readonly byUser = new Map<string, Set<string>>();
  /** Open (or openable) Deliver streams, by gateway id. */
  private readonly links = new Map<string, GatewayLink>();
  /** Gateways in this process: their links are never closed by routing events. */
  private readonly local = new Set<string>();
  private readonly addresses = new Map<string, GatewayAddress>();
  /** Gateways of other processes whose sessions came with no address, each reported once (see onSessionEvent). */
  private readonly unreachable = new Set<string>();
  private readonly closers: Closeable[] = [];
  private readonly audiences: PullAudiences;
  /** The membership store tells of changes (watch): member sets are kept across batches. */
  private watchingMembers = false;
  private readonly recentRecipients = new RecentRecipients(RECENT_RECIPIENTS_WINDOW_MS);
  /** Notifications waiting to be asked of push again. */
  private readonly notifyRetries: RetryLater;

  constructor(private readonly options: RouterOptions) {
    this.audiences = new PullAudiences((c) => options.membership.members(c));
    this.notifyRetries = new RetryLater({
      delaysMs: NOTIFY_RETRY_DELAYS_MS,
      waitingMax: NOTIFY_RETRIES_WAITING_MAX,
    });
  }

  async start(): Promise<void> {
    const { membership } = this.options;
    // Member sets of pull conversations stay cached where the store says when members change.
    const unwatch = membership.watch?.((conversationId) => this.audiences.forget(conversationId));
    if (unwatch) this.closers.push({ close: async () => unwatch() });
    this.watchingMembers = unwatch !== undefined;
    this.closers.push(await this.options.routing.subscribe((e) => this.onSessionEvent(e)));
    const { log } = this.options;
    this.closers.push(
      log.deliveries
        ? // The log assigns the inbox cursors itself (distributed: per inbox partition owner).
          await log.deliveries({
            deliver: async (batch) => {
              const started = performance.now();
              const pull = batch.filter((d) => d.pull).map((d) => d.message.conversationId);
              this.deliver(batch, pull.length > 0 ? await this.pullAudiences(pull) : NO_AUDIENCES);
              this.options.metrics.routerBatchSeconds.observe((performance.now() - started) / 1000);
            },
            membershipChanged: (conversationId) => this.audiences.forget(conversationId),
            partitionsChanged: () => this.audiences.forgetAll(),
            recheckInboxes: (userIds) => this.recheckInboxes(userIds),
          })
        : await log.consume(CONSUMER_GROUP, (batch) => this.route(batch), {
            beforeCommit: true,
            markMayRepeat: true,
            addressesMembers: true,
          }),
    );
  }

  /** A gateway in this process, reached through an in-process client. */
  attachGateway(gatewayId: string, client: GatewayClient): void {
    this.local.add(gatewayId);
    this.links.set(
      gatewayId,
      this.link(gatewayId, () => client),
    );
  }

  private link(gatewayId: string, dial: () => GatewayClient): GatewayLink {
    const { logger: log, metrics, streamQueueBytesMax: queueBytesMax } = this.options;
    return new GatewayLink({ gatewayId, dial, queueBytesMax, log, metrics });
  }

  /** The link to a gateway, opened on first use from the address its sessions advertised. */
  private linkTo(gatewayId: string): GatewayLink | undefined {
    const existing = this.links.get(gatewayId);
    if (existing) return existing;
    const where = this.addresses.get(gatewayId);
    if (!where) return undefined;
    const link = this.link(gatewayId, () => this.options.dialGateway(where.address));
    this.links.set(gatewayId, link);
    return link;
  }

  /**
   * A session of another process's gateway that gave no address to reach it by: two processes of
   * role all on one distributed backend, the other without gRPC. What this router routes to such a
   * session is in the user's inbox but is not delivered live (the client gets it at its next sync),
   * which looks like a stalled client, not an error: say so, once per gateway.
   */
  private reportUnreachable(gatewayId: string): void {
    if (this.unreachable.has(gatewayId)) return;
    this.unreachable.add(gatewayId);
    // Each delivery it misses counts in switchboard_router_deliveries_dropped_total{reason="unreachable"}.
    this.options.logger.error(
      "router: sessions of another process's gateway have no gRPC address; messages routed here to them are not delivered live (their clients get them only at their next sync). Give every process of role all sharing these topics a gRPC port (grpc.port), or run one",
      { gatewayId },
    );
  }

  /** Closes the stream to a gateway of another process (gone, or back under a new address). */
  private forgetGateway(gatewayId: string): void {
    this.addresses.delete(gatewayId);
    const link = this.links.get(gatewayId);
    if (!link || this.local.has(gatewayId)) return;
    this.links.delete(gatewayId);
    void link.close();
  }

  private onSessionEvent(e: SessionEvent): void {
    if (e.kind === "up" && !e.gatewayAddress && !this.local.has(e.gatewayId))
      this.reportUnreachable(e.gatewayId);
    if (e.kind !== "gateway-gone" && e.gatewayAddress && !this.local.has(e.gatewayId)) {
      const known = this.addresses.get(e.gatewayId);
      if (!known || (known.address !== e.gatewayAddress && e.gatewayEpoch >= known.epoch)) {
        if (known) this.forgetGateway(e.gatewayId);
        this.addresses.set(e.gatewayId, { address: e.gatewayAddress, epoch: e.gatewayEpoch });
      }
    }
    if (e.kind === "up") {
      // A session the table learned of late may have synced and gone live before this router knew
      // of it, and missed a message routed meanwhile: its gateway looks at the user's inbox once. So
      // does a session learned of promptly whose user was handed a message just now. (Events with
      // no lateness are a replay at start, or a table that learns of a session before its client
      // can sync: the embedded backend's.)
      if (
        e.lateByMs !== undefined &&
        (e.lateByMs > ROUTING_LATE_RECHECK_MS || this.recentRecipients.has(e.userId))
      )
        this.linkTo(e.gatewayId)?.push({ userIds: [e.userId], recheckInboxes: true });
      this.sessions.set(e.sessionId, {
        userId: e.userId,
        gatewayId: e.gatewayId,
        gatewayEpoch: e.gatewayEpoch,
      });
      let set = this.byUser.get(e.userId);
      if (!set) {
        set = new Set();
        this.byUser.set(e.userId, set);
      }
      set.add(e.sessionId);
    } else if (e.kind === "down") {
      this.dropSession(e.sessionId);
    } else {
      for (const [id, s] of this.sessions) {
        if (s.gatewayId === e.gatewayId && s.gatewayEpoch <= e.gatewayEpoch) this.dropSession(id);
      }
      const known = this.addresses.get(e.gatewayId);
      if (known && known.epoch <= e.gatewayEpoch) this.forgetGateway(e.gatewayId);
    }
  }

  private dropSession(sessionId: string): void {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    this.sessions.delete(sessionId);
    const set = this.byUser.get(s.userId);
    set?.delete(sessionId);
    if (set?.size === 0) this.byUser.delete(s.userId);
  }

  /** Has the gateways of these users' sessions look at their inboxes once (what a session missed). */
  private recheckInboxes(userIds: readonly string[]): void {
    const byGateway = new Map<string, string[]>();
    for (const userId of userIds)
      for (const s of this.lookup(userId)) {
        const users = byGateway.get(s.gatewayId) ?? [];
        if (!users.includes(userId)) users.push(userId);
        byGateway.set(s.gatewayId, users);
      }
    for (const [gatewayId, users] of byGateway)
      this.linkTo(gatewayId)?.push({ userIds: users, recheckInboxes: true });
  }

  /** Sessions of a user: [sessionId, gatewayId, epoch]. */
  lookup(userId: string): Array<{ sessionId: string; gatewayId: string; gatewayEpoch: number }> {
    const out = [];
    for (const id of this.byUser.get(userId) ?? []) {
      const s = this.sessions.get(id);
      if (s) out.push({ sessionId: id, gatewayId: s.gatewayId, gatewayEpoch: s.gatewayEpoch });
    }
    return out;
  }

  /** The log's messages: the router writes each recipient's inbox entry, then delivers. */
  private async route(batch: LoggedMessage[]): Promise<void> {
    const started = performance.now();
    const { membership, inbox } = this.options;
    // Recipients come with the message when the log knows them (the distributed sequencer addresses
    // each message); a direct conversation's are in its id (its members never change, and it is
    // always push); otherwise the member lists of the batch's conversations are read concurrently.
    // Pull conversations get no inbox entries; their member sets are read for the live delivery.
    const membersOf = new Map<string, readonly string[]>();
    // A message this router may have routed before a restart keeps the recipients it was given then:
    // today's members may include a user added since, who must not get what was sent before.
    const routedBefore = new Map<LoggedMessage, readonly string[]>();
    for (const m of batch) {
      if (!m.mayRepeat || m.recipients || directMembers(m.conversationId) || !inbox.appendedFor) continue;
      const users = await inbox.appendedFor(m.conversationId, m.seq);
      if (users.length > 0) routedBefore.set(m, users);
    }
    const read = new Set<string>();
    for (const m of batch) {
      if (m.recipients || routedBefore.has(m) || membersOf.has(m.conversationId)) continue;
      const pair = directMembers(m.conversationId);
      if (pair) membersOf.set(m.conversationId, pair[0] === pair[1] ? [pair[0]] : pair);
      else read.add(m.conversationId);
    }
    const conversations = [...read];
    const pull = new Set<string>();
    for (let i = 0; i < conversations.length; i += MEMBER_READS_CONCURRENT) {
      const slice = conversations.slice(i, i + MEMBER_READS_CONCURRENT);
      const records = await Promise.all(slice.map((c) => membership.getConversation(c)));
      const lists = await Promise.all(
        slice.map((c, j) => (records[j]?.delivery === "pull" ? [] : membership.members(c))),
      );
      for (const [j, c] of slice.entries()) {
        if (records[j]?.delivery === "pull") pull.add(c);
        else membersOf.set(c, lists[j] ?? []);
      }
    }
    const audiences =
      pull.size === 0
        ? NO_AUDIENCES
        : this.watchingMembers
          ? await this.audiences.load(pull)
          : await this.audiences.refresh(pull);
    const recipientsOf = (m: LoggedMessage) =>
      pull.has(m.conversationId)
        ? []
        : (m.recipients ?? routedBefore.get(m) ?? membersOf.get(m.conversationId) ?? []);
    const entries = batch.flatMap((m) =>
      recipientsOf(m).map((userId) => ({
        userId,
        conversationId: m.conversationId,
        seq: m.seq,
        messageId: m.messageId,
      })),
    );
    const stored = await inbox.append(entries);
    // A message handed over before its commit (its inbox entries joined that commit): delivered
    // only once durable.
    const committed = batch.flatMap((m) => (m.committed ? [m.committed] : []));
    if (committed.length > 0) await Promise.all(committed);
    let i = 0;
    const deliveries = batch.map(
      (m): InboxDelivery => ({
        message: m,
        recipients: recipientsOf(m).map((userId) => ({ userId, cursor: stored[i++]!.cursor })),
        ...(pull.has(m.conversationId) ? { pull: true } : {}),
        ...(m.trace ? { trace: m.trace } : {}),
      }),
    );
    this.deliver(deliveries, audiences);
    this.options.metrics.routerBatchSeconds.observe((performance.now() - started) / 1000);
  }

  /**
   * The online audiences of these pull conversations, without those whose member lists cannot be
   * read now. The batch's other deliveries go out all the same: the inbox owner has marked the batch
   * applied and would not hand it over again, so failing here would leave its recipients without a
   * live event until their next message. A pull conversation's members fill the gap by seq
   * (docs/protocol.md §3.1).
   */
  private async pullAudiences(conversationIds: string[]): Promise<ReadonlyMap<string, ReadonlySet<string>>> {
    const { sets, unreadable } = await this.audiences.loadSettled(conversationIds);
    if (unreadable.length > 0) {
      this.options.metrics.deliveriesDroppedTotal.inc({ reason: "audience_unavailable" }, unreadable.length);
      this.options.logger.warn(
        "router: pull conversations' members unreadable; their messages go live to nobody",
        {
          conversations: unreadable.map((u) => u.conversationId).slice(0, 10),
          err: unreadable[0]!.error,
        },
      );
    }
    return sets;
  }

  /**
   * Hands each message to every gateway holding a device of a recipient, with the recipient's cursor,
   * and asks push to notify recipients with no device online (never the sender).
   */
  private deliver(batch: InboxDelivery[], audiences: ReadonlyMap<string, ReadonlySet<string>>): void {
    this.recentRecipients.rotate();
    let entries = 0;
    for (const delivery of batch) {
      entries += delivery.recipients.length;
      if (delivery.pull)
        this.deliverPull(delivery, audiences.get(delivery.message.conversationId) ?? new Set());
      else this.deliverPush(delivery);
    }
    this.options.metrics.inboxEntriesTotal.inc(entries);
  }

  /** A pull message: once to each gateway holding a device of an online member, cursor 0. */
  private deliverPull({ message: m, trace: carrier }: InboxDelivery, audience: ReadonlySet<string>): void {
    const span =
      tracing.on && carrier ? startSpan("route", carrier, { attributes: routeAttributes(m) }) : undefined;
    const traceparent = (span && carrierOf(span)?.traceparent) ?? "";
    const perGateway = new Map<string, string[]>();
    const add = (userId: string) => {
      const gateways = new Set<string>();
      for (const sid of this.byUser.get(userId) ?? []) {
        const g = this.sessions.get(sid)?.gatewayId;
        if (g) gateways.add(g);
      }
      for (const g of gateways) {
        const list = perGateway.get(g);
        if (list) list.push(userId);
        else perGateway.set(g, [userId]);
      }
    };
    // Whichever is smaller: the members, or the users online.
    if (audience.size <= this.byUser.size) {
      for (const userId of audience) if (this.byUser.has(userId)) add(userId);
    } else {
      for (const userId of this.byUser.keys()) if (audience.has(userId)) add(userId);
    }
    const frame: MessageInitShape<typeof DeliverRequestSchema>["frame"] = {
      kind: { case: "message", value: { message: toWireMessage(m) } },
    };
    let online = 0;
    for (const [gatewayId, userIds] of perGateway) {
      // Counted only when handed to the gateway's stream (a dropped one is counted as dropped).
      if (this.enqueue(gatewayId, { userIds, cursors: [], frame, traceparent }))
        this.options.metrics.deliveriesTotal.inc(userIds.length);
      online += userIds.length;
    }
    span?.setAttributes({
      "switchboard.recipients": audience.size,
      "switchboard.recipients.online": online,
      "switchboard.gateways": perGateway.size,
    });
    span?.end();
  }

  private deliverPush({ message: m, recipients, trace: carrier }: InboxDelivery): void {
    // The fan-out of a traced message is a span of its trace; each gateway's delivery its child.
    const span =
      tracing.on && carrier ? startSpan("route", carrier, { attributes: routeAttributes(m) }) : undefined;
    const traceparent = (span && carrierOf(span)?.traceparent) ?? "";
    const perGateway = new Map<string, { userIds: string[]; cursors: bigint[] }>();
    for (const { userId, cursor } of recipients) {
      this.recentRecipients.add(userId);
      const sessions = this.byUser.get(userId);
      if (!sessions || sessions.size === 0) {
        if (userId !== m.sender) {
          if (span) context.with(trace.setSpan(context.active(), span), () => this.notifyOffline(userId, m));
          else this.notifyOffline(userId, m);
        }
        continue;
      }
      const gateways = new Set<string>();
      for (const sid of sessions) {
        const g = this.sessions.get(sid)?.gatewayId;
        if (g) gateways.add(g);
      }
      for (const g of gateways) {
        let target = perGateway.get(g);
        if (!target) {
          target = { userIds: [], cursors: [] };
          perGateway.set(g, target);
        }
        target.userIds.push(userId);
        target.cursors.push(BigInt(cursor));
      }
    }
    const frame: MessageInitShape<typeof DeliverRequestSchema>["frame"] = {
      kind: { case: "message", value: { message: toWireMessage(m) } },
    };
    for (const [gatewayId, t] of perGateway) {
      if (this.enqueue(gatewayId, { userIds: t.userIds, cursors: t.cursors, frame, traceparent }))
        this.options.metrics.deliveriesTotal.inc(t.userIds.length);
    }
    span?.setAttributes({
      "switchboard.recipients": recipients.length,
      "switchboard.gateways": perGateway.size,
    });
    span?.end();
  }

  private notifyOffline(userId: string, m: StoredMessage): void {
    this.notify({
      userId,
      conversationId: m.conversationId,
      title: m.sender,
      body: m.body.slice(0, 120),
      seq: BigInt(m.seq),
    });
  }

  /**
   * Asks push to notify without waiting for it (delivery never does); a failure it may get past is
   * asked again later. A repeat is the same notification: push knows it by the message's seq.
   */
  private notify(req: NotifyInit): void {
    this.notifyRetries.run(
      () => this.options.push.notify(req),
      (reason, err, attempts) => {
        this.options.metrics.notificationsDroppedTotal.inc({ reason });
        if (reason === "failed")
          this.options.logger.warn("router: push failed", { userId: req.userId, attempts, err });
      },
    );
  }

  private enqueue(gatewayId: string, req: DeliverInit): boolean {
    const link = this.linkTo(gatewayId);
    if (!link) {
      this.options.metrics.deliveriesDroppedTotal.inc({ reason: "unreachable" });
      return false;
    }
    return link.push(req);
  }

  /** Relays an ephemeral frame to users' and/or specific sessions' devices. Returns sessions reached. */
  /** Counts a relay refused because it came after its expiry (service.ts). */
  relayExpired(): void {
    this.options.metrics.relaysExpiredTotal.inc();
  }

  relay(
    userIds: string[],
    sessionIds: string[],
    excludeSessionId: string,
    frame: ServerFrame | MessageInitShape<typeof DeliverRequestSchema>["frame"],
  ): number {
    const perGateway = new Map<string, { userIds: string[]; sessionIds: string[] }>();
    let reached = 0;
    const add = (gatewayId: string, kind: "userIds" | "sessionIds", id: string) => {
      let t = perGateway.get(gatewayId);
      if (!t) {
        t = { userIds: [], sessionIds: [] };
        perGateway.set(gatewayId, t);
      }
      t[kind].push(id);
    };
    for (const userId of new Set(userIds)) {
      const gateways = new Set<string>();
      for (const sid of this.byUser.get(userId) ?? []) {
        if (sid === excludeSessionId) continue;
        const g = this.sessions.get(sid)?.gatewayId;
        if (g) {
          gateways.add(g);
          reached++;
        }
      }
      for (const g of gateways) add(g, "userIds", userId);
    }
    for (const sid of new Set(sessionIds)) {
      const g = this.sessions.get(sid)?.gatewayId;
      if (g && sid !== excludeSessionId) {
        add(g, "sessionIds", sid);
        reached++;
      }
    }
    for (const [gatewayId, t] of perGateway) {
      this.enqueue(gatewayId, {
        userIds: t.userIds,
        sessionIds: t.sessionIds,
        excludeSessionId,
        frame: frame as DeliverInit["frame"],
      });
    }
    return reached;
  }

  /**
   * Closes a user's connections (one session, or all when `sessionId` is empty) with a WebSocket close
   * code and reason, through each holding gateway's Deliver stream. Returns the sessions told.
   */
  disconnect(userId: string, sessionId: string, code: number, reason: string): number {
    const perGateway = new Map<string, string[]>();
    for (const sid of this.byUser.get(userId) ?? []) {
      if (sessionId !== "" && sid !== sessionId) continue;
      const g = this.sessions.get(sid)?.gatewayId;
      if (g === undefined) continue;
      const list = perGateway.get(g) ?? [];
      list.push(sid);
      perGateway.set(g, list);
    }
    let told = 0;
    for (const [gatewayId, sessionIds] of perGateway)
      if (this.enqueue(gatewayId, { sessionIds, close: { code, reason } })) told += sessionIds.length;
    return told;
  }

  async close(): Promise<void> {
    this.notifyRetries.close();
    for (const c of this.closers.splice(0)) await c.close();
    const links = [...this.links.values()];
    this.links.clear();
    await Promise.all(links.map((l) => l.close()));
  }
}

export type { DeliverRequest };
