/**
 * The gateway: terminates client WebSockets (authenticating on upgrade or in a first frame),
 * keeps the registry of its connections, publishes session up/down routing events, and exposes the
 * GatewayService: Deliver (the router's long-lived stream), Drain and Stats.
 */
import { randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer } from "ws";
import type { MessageEvent } from "../../gen/switchboard/client/v1/client_pb.js";
import type { DeliverRequest, GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import type { Identity } from "../lib/auth.js";
import { dropOldest } from "../lib/drop-oldest.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import { Limiter } from "../lib/limiter.js";
import { mapLimited } from "../lib/map-limited.js";
import { EVENT_RELAY_RETRIES, RetryLater } from "../lib/retry-later.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { SpanKind, startSpan, tracing } from "../lib/tracing.js";
import { presenceShardOf, presenceShards } from "../presence/shards.js";
import { CloseCode } from "./close-codes.js";
import {
  type Encoding,
  encodeServerFrame,
  MessageEventFrames,
  SUBPROTOCOL_BINARY,
  SUBPROTOCOL_JSON,
} from "./codec.js";
import { Connection, type GatewayContext, STOP_REPLIES_WAIT_MS } from "./connection.js";
import { ContactCheck } from "./contacts.js";
import { TokenBucket, UserBuckets } from "./rate-limit.js";
import type { GatewayServices } from "./services.js";
import { type Registration, SessionRegistrations } from "./session-registration.js";
import { verifyInTime } from "./verify-in-time.js";

const CREDIT_EVERY_EVENTS = 256;
const RECHECK_SPREAD_MS = 1_000;
const SHARED_CONVERSATIONS_SCAN_MAX = 1_000;
/** A user's listed groups serve their presence subscribes this long (contacts.ts). */
const GROUP_LIST_TTL_MS = 10_000;
/** ...and one that does not settle a subscribe is read again if at least this old. */
const GROUP_LIST_REREAD_MS = 1_000;
/**
 * ...and the group ids held in such lists at most, each list counting one more (about 25 MB; lists
 * past their lifetime go as others are stored).
 */
const GROUP_LIST_IDS_MAX = 500_000;
/** Sessions subscribed again at once on a presence shard that lost this gateway's watches. */
const WATCHES_RENEWED_CONCURRENT = 16;
/**
 * A session's EndSession that a presence shard failed is asked again after these waits (and once
 * more past the lease, offlineAfterMs: by then the shard has dropped the watches itself unless this
 * gateway's renewals reach it), and at most this many wait at once.
 */
const END_SESSION_RETRY_DELAYS_MS = [1_000, 5_000];
const END_SESSION_RETRIES_WAITING_MAX = 10_000;
/**
 * subscribePresence requests per user on one gateway: sustained, at once (a client renewing 1,000
 * watches after a reconnect sends 10). A refusal takes no token: the user's connections renewing
 * side by side and retrying as told all get through (with debt, each refusal would push back the
 * token the others wait for, and they could be refused for ever).
 */
const PRESENCE_SUBSCRIBES_PER_SECOND = 10;
const PRESENCE_SUBSCRIBES_BURST = 40;
/** Fragments of one client message (close 1008 past it; docs/protocol.md §1.2). */
export const WS_FRAGMENTS_MAX = 16_384;
/** Chunks of one client message buffered before it is whole (close 1008 past it). */
export const WS_BUFFERED_CHUNKS_MAX = 262_144;
/** Pongs answering a client's pings not yet written (the connection ends past it, 1006). */
export const WS_PENDING_PONGS_MAX = 60;
/**
 * ws's own bounds, named here because docs/protocol.md states them: a message in more than 16,384
 * fragments, or more than 262,144 chunks of one message buffered, closes with 1008; more than 60 pongs
 * still to be written (a burst of pings) ends the connection without a close frame. (A variable, not
 * a literal: @types/ws 8.18 does not know maxPendingAutoPongs, which ws has since 8.19.)
 */
const WS_BOUNDS = {
  maxFragments: WS_FRAGMENTS_MAX,
  maxBufferedChunks: WS_BUFFERED_CHUNKS_MAX,
  maxPendingAutoPongs: WS_PENDING_PONGS_MAX,
};
/** Group changes (connection.ts GROUP_CHANGES: the group's and its members') per user: sustained, at once. */
const GROUP_CHANGES_PER_SECOND = 5;
const GROUP_CHANGES_BURST = 20;
/**
 * Members the group changes of one user may add or remove (each a row or two written, the list read
 * and encoded): sustained; at once, groups.membersMax, so that one request may create the largest
 * group. Storing 100,000 members holds the embedded store's thread for about 300 ms: unbounded, one
 * user's five largest creates a second (the count limit alone) kept every other client waiting.
 */
const GROUP_MEMBER_CHANGES_PER_SECOND = 10_000;
/**
 * Members the group changes of every user together may add or remove per second on one gateway (at
 * once, groups.membersMax): the per-user allowance does not bound users acting together, and three
 * of them creating 100,000-member groups as often as each was allowed held every other client's
 * messages for up to 1.2 s.
 */
const GATEWAY_MEMBER_CHANGES_PER_SECOND = 20_000;

/**
 * Listings (listConversations, listMembers, listReceipts) being answered at once in a gateway process;
 * the rest wait (each connection's one at a time). A listing may read hundreds of rows: unbounded, a
 * few connections asking for them as fast as their frame rate allows queued hundreds of thousands of
 * storage reads ahead of every message's, and sends timed out for minutes.
 */
const LISTINGS_IN_FLIGHT_MAX = 16;

/** Typing indicators a gateway relays per pull conversation per second, and the conversations tracked. */
const PULL_TYPING_PER_SECOND = 5;
const PULL_TYPING_CONVERSATIONS_MAX = 10_000;
/**
 * Typing indicators a gateway relays per user per second (burst twice that), in all their
 * conversations: each reaches every member's sessions (up to groups.pullThreshold members), so a
 * user's connections typing as fast as their frame rate allows made hundreds of thousands of
 * deliveries a second and delayed everyone's messages by seconds.
 */
const USER_TYPING_PER_SECOND = 20;
/**
 * Entries (conversations, members, watermarks) a user's listings may return per second on one
 * gateway (burst twice that), each listing counted by what it returned: every entry costs storage
 * reads, and one user's connections listing 1,000 conversations as fast as their listings were
 * answered held every other user's messages for hundreds of milliseconds.
 */
const USER_LISTED_PER_SECOND = 10_000;
/**
 * Message-body bytes a user's sync and history pages may return per second on one gateway (burst twice
 * that), each page counted by its bodies' UTF-8 bytes: five connections of one user asking for pages of
 * 1,000 long messages as fast as they were answered (100 MB a second) delayed every other user's
 * messages by 65 ms at the median and 200 ms at worst.
 */
const USER_READ_BYTES_PER_SECOND = 8 * 1024 * 1024;

export interface GatewayOptions extends GatewayServices {
  gatewayId: string;
  gatewayEpoch: number;
  /** host:port routers in other processes dial for this gateway's Deliver stream ("" in-process only). */
  advertiseAddress: string;
}

export class Gateway {
  readonly id: string;
  readonly epoch: number;
  private readonly wss: WebSocketServer;
  private readonly byUser = new Map<string, Set<Connection>>();
  private readonly bySession = new Map<string, Connection>();
  private readonly userSends: UserBuckets;
  /**
   * Group changes per user (connection.ts GROUP_CHANGES). A refusal
   * takes nothing: it costs the gateway nothing, and the user's connections may retry side by side.
   */
  private readonly userGroupChanges = new UserBuckets(GROUP_CHANGES_PER_SECOND, GROUP_CHANGES_BURST, {
    debt: false,
  });
  /** Members added or removed per user (GROUP_MEMBER_CHANGES_PER_SECOND); set up with the config. */
  private readonly userGroupMembers: UserBuckets;
  /** Members added or removed by everyone (GATEWAY_MEMBER_CHANGES_PER_SECOND); set up with the config. */
  private readonly groupMembers: TokenBucket;
  /** Presence subscribes, per user (each may read hundreds of memberships); refusals take nothing. */
  private readonly userPresenceSubscribes = new UserBuckets(
    PRESENCE_SUBSCRIBES_PER_SECOND,
    PRESENCE_SUBSCRIBES_BURST,
    { debt: false },
  );
  /** Typing indicators this gateway relays per pull conversation (a large group): a few per second. */
  private readonly pullTyping = new Map<string, TokenBucket>();
  /** Entries listed per user (USER_LISTED_PER_SECOND), charged once each listing is answered. */
  private readonly userListed = new UserBuckets(USER_LISTED_PER_SECOND, USER_LISTED_PER_SECOND * 2, {
    debt: false,
  });
  /** Message-body bytes read per user (USER_READ_BYTES_PER_SECOND), charged once each page is answered. */
  private readonly userRead = new UserBuckets(USER_READ_BYTES_PER_SECOND, USER_READ_BYTES_PER_SECOND * 2, {
    debt: false,
  });
  /** Typing indicators relayed per user (USER_TYPING_PER_SECOND); a refusal takes nothing. */
  private readonly userTyping = new UserBuckets(USER_TYPING_PER_SECOND, USER_TYPING_PER_SECOND * 2, {
    debt: false,
  });
  private readonly all = new Set<Connection>();
  /** Connections still to send their auth frame (counted against gateway.unauthenticatedMax). */
  private readonly awaitingAuth = new Set<Connection>();
  /** Upgrades whose Authorization header is being verified. */
  private verifyingUpgrades = 0;
  private readonly ctx: GatewayContext;
  private draining = false;
  /** Told once when draining starts (the process's readiness and gRPC health change then). */
  private readonly drainListeners: Array<() => void> = [];
  /** Set by close(); each open Deliver stream's way to stop waiting for its next request. */
  private closed = false;
  private readonly deliverStreams = new Set<() => void>();
  private pingTimer: NodeJS.Timeout;
  private watchLeaseTimer: NodeJS.Timeout;
  /**
   * Presence shards (by index) that said they lost this gateway's watches, or whose renewal failed
   * (the answer may have said so, and a shard says so only once), on which not every session has
   * subscribed again yet; each with how many times it was found so, so that a pass that began
   * before the latest time does not clear it.
   */
  private readonly watchesOwed = new Map<number, number>();
  /** Shards (by index) whose sessions are being subscribed again now (one pass per shard at a time). */
  private readonly resubscribing = new Set<number>();
  /** The lease is taken (announce): a "lost" from now on means lost. */
  private leaseTaken = false;
  /** EndSession calls a presence shard failed, asked again (see END_SESSION_RETRY_DELAYS_MS). */
  private readonly endSessionRetries: RetryLater;
  /** The sessions' routing records ("up" until written, then "down"). */
  private readonly registrations: SessionRegistrations;
  /** Events relayed eventually (GatewayServices.relayEventually). */
  private readonly eventRelays = new RetryLater(EVENT_RELAY_RETRIES);
  /** Who shares a conversation with whom, for presence subscribes. */
  private readonly contacts: ContactCheck;
  private readonly alive = new WeakSet<object>();

  constructor(private readonly options: GatewayOptions) {
    this.id = options.gatewayId;
    const g = options.config.gateway;
    this.userSends = new UserBuckets(g.userSendsPerSecond, g.userSendsPerSecond * 2);
    const { membersMax } = options.config.groups;
    this.userGroupMembers = new UserBuckets(GROUP_MEMBER_CHANGES_PER_SECOND, membersMax, { debt: false });
    this.groupMembers = new TokenBucket(GATEWAY_MEMBER_CHANGES_PER_SECOND, membersMax);
    this.epoch = options.gatewayEpoch;
    const { config } = options;
    this.endSessionRetries = new RetryLater({
      delaysMs: [...END_SESSION_RETRY_DELAYS_MS, config.presence.offlineAfterMs],
      waitingMax: END_SESSION_RETRIES_WAITING_MAX,
      retrying: () => options.metrics.presence.endSessionFailures.inc({ outcome: "retried" }),
    });
    this.registrations = new SessionRegistrations({
      publish: (event) => options.backends.routing.publish(event),
      log: options.log,
    });
    options.metrics.countRoutingRecordsBehind(() => this.registrations.overdue());
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.gateway.frameBytesMax,
      ...WS_BOUNDS,
      perMessageDeflate: false, // compression oracles and zlib memory: off (docs/protocol.md)
      handleProtocols: (protocols) =>
        protocols.has(SUBPROTOCOL_BINARY)
          ? SUBPROTOCOL_BINARY
          : protocols.has(SUBPROTOCOL_JSON)
            ? SUBPROTOCOL_JSON
            : false,
    });
    options.metrics.connectionsMax.set(config.gateway.connectionsMax);
    this.contacts = new ContactCheck(options.backends.membership, {
      groupsScanned: SHARED_CONVERSATIONS_SCAN_MAX,
      groupListTtlMs: GROUP_LIST_TTL_MS,
      groupListRereadMs: GROUP_LIST_REREAD_MS,
      idsMax: GROUP_LIST_IDS_MAX,
    });
    this.ctx = {
      config,
      log: options.log,
      metrics: options.metrics,
      backends: options.backends,
      conversations: options.conversations,
      relays: options.relays,
      presence: options.presence,
      push: options.push,
      verify: options.verify,
      relayEventually: (event, key, relay) =>
        this.eventRelays.run(
          relay,
          (reason, err, attempts) => {
            options.metrics.eventRelaysDroppedTotal.inc({ event, reason });
            if (reason === "failed") options.log.warn("gateway: event not relayed", { event, attempts, err });
          },
          key,
        ),
      takeUserSend: (userId) => this.userSends.take(userId),
      takeGroupChange: (userId, members) => this.takeGroupChange(userId, members),
      takePullTyping: (conversationId) => this.takePullTyping(conversationId),
      takeUserTyping: (userId) => {
        const taken = this.userTyping.takeMany(userId, 1);
        return taken.waitMs === 0 ? taken.refund : undefined;
      },
      takeUserListing: (userId) => this.userListed.take(userId),
      chargeUserListing: (userId, entries) => this.userListed.charge(userId, entries),
      takeUserRead: (userId) => this.userRead.take(userId),
      chargeUserRead: (userId, bytes) => this.userRead.charge(userId, bytes),
      takePresenceSubscribe: (userId) => this.userPresenceSubscribes.take(userId),
      listings: new Limiter(LISTINGS_IN_FLIGHT_MAX),
      firstStranger: (user, others, signal) => this.contacts.firstStranger(user, others, signal),
      hasRoomFor: (userId) => (this.byUser.get(userId)?.size ?? 0) < config.gateway.userConnectionsMax,
      register: (conn) => this.register(conn),
      unregister: (conn) => this.unregister(conn),
      watcherId: `${this.id}/${this.epoch}/${randomBytes(6).toString("base64url")}`,
    };
    this.pingTimer = setInterval(() => this.ping(), config.gateway.pingIntervalMs);
    this.pingTimer.unref();
    // Presence drops the watches of a gateway that stops renewing them (it died): renewed three
    // times per lease, so a late or failed renewal or two cost nothing.
    this.watchLeaseTimer = setInterval(
      () => void this.renewWatches(),
      Math.max(100, Math.floor(config.presence.offlineAfterMs / 3)),
    );
    this.watchLeaseTimer.unref();
  }

  /**
   * Tells the routers that sessions of this gateway's earlier epochs are gone (a restart in place
   * under the same id: their processes died with the old one), before it accepts connections. And
   * takes its presence lease, so that presence's first "lost" later means lost (nothing to redo now).
   */
  async announce(): Promise<void> {
    await this.options.backends.routing.publish({
      kind: "gateway-gone",
      userId: "",
      sessionId: "",
      gatewayId: this.id,
      gatewayEpoch: this.epoch - 1,
    });
    await this.renewWatches();
    this.leaseTaken = true;
  }

  get connections(): number {
    return this.all.size;
  }

  get users(): number {
    return this.byUser.size;
  }

  /**
   * Whether the gateway drains (drain(): SIGTERM with gateway.shutdownDrainMs, or the operator's
   * Drain) or closes: it takes no new connections for good, so it is not ready and no client is sent here.
   */
  get isDraining(): boolean {
    return this.draining;
  }

  /** Calls `listener` when draining starts. */
  onDrain(listener: () => void): void {
    this.drainListeners.push(listener);
  }

  /** Handles an HTTP upgrade on the WebSocket path. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const { config, metrics } = this.options;
    const refuse = (status: number, text: string, result: string) => {
      metrics.connectsTotal.inc({ result });
      socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    const origin = req.headers.origin;
    if (
      origin !== undefined &&
      config.auth.allowedOrigins.length > 0 &&
      !config.auth.allowedOrigins.includes(origin)
    ) {
      return refuse(403, "Forbidden", "origin");
    }
    const offered = req.headers["sec-websocket-protocol"];
    if (offered !== undefined) {
      const protocols = offered.split(",").map((p) => p.trim());
      if (!protocols.includes(SUBPROTOCOL_JSON) && !protocols.includes(SUBPROTOCOL_BINARY)) {
        return refuse(400, "Bad Request", "subprotocol");
      }
    }
    if (this.draining) return refuse(503, "Service Unavailable", "draining");
    if (this.all.size >= config.gateway.connectionsMax) return refuse(503, "Service Unavailable", "full");
    const authz = req.headers.authorization;
    // Upgrades whose Authorization header is being checked are not connections yet, and each may wait
    // up to auth.authTimeoutMs on a key set: as many may wait as connections may await an auth frame
    // (counted apart, so sockets that never authenticate do not keep header-authenticated clients out).
    const unauthenticated = authz === undefined ? this.awaitingAuth.size : this.verifyingUpgrades;
    if (unauthenticated >= config.gateway.unauthenticatedMax)
      return refuse(503, "Service Unavailable", "unauthenticated full");
    let identity: Identity | undefined;
    if (authz !== undefined) {
      const match = /^Bearer (.+)$/i.exec(authz);
      this.verifyingUpgrades++;
      try {
        if (!match?.[1]) throw new Error("malformed Authorization header");
        identity = await verifyInTime(this.options.verify, match[1], config.auth.authTimeoutMs);
      } catch (err) {
        // A token that could not be checked now (the key set unreachable) is not a bad token.
        if (err instanceof SwitchboardError && err.code === Code.UNAVAILABLE)
          return refuse(503, "Service Unavailable", "auth unavailable");
        return refuse(401, "Unauthorized", "unauthorized");
      } finally {
        this.verifyingUpgrades--;
      }
      if (socket.destroyed) return; // the client went away meanwhile
      // The gateway may have filled up or begun to drain meanwhile.
      if (this.draining) return refuse(503, "Service Unavailable", "draining");
      if (this.all.size >= config.gateway.connectionsMax) return refuse(503, "Service Unavailable", "full");
    }
    if (socket.destroyed) return;
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      metrics.connectsTotal.inc({ result: "accepted" });
      const encoding: Encoding = ws.protocol === SUBPROTOCOL_BINARY ? "binary" : "json";
      const conn = new Connection(this.ctx, ws, randomBytes(12).toString("base64url"), encoding);
      this.all.add(conn);
      metrics.sockets.set(this.all.size);
      this.alive.add(ws);
      ws.on("pong", () => this.alive.add(ws));
      ws.on("close", () => {
        this.all.delete(conn);
        metrics.sockets.set(this.all.size);
        this.awaitingAuth.delete(conn);
      });
      if (identity) {
        conn.authenticate(identity, 0).catch((err: unknown) => {
          this.options.log.error("gateway: registration failed", { err });
          conn.close(CloseCode.INTERNAL_ERROR, "registration failed");
        });
      } else {
        this.awaitingAuth.add(conn);
        conn.awaitAuth();
      }
    });
  }

  private ping(): void {
    const gone = (userId: string) => !this.byUser.has(userId);
    this.userSends.forgetRefilled(gone);
    this.userGroupChanges.forgetRefilled(gone);
    this.userGroupMembers.forgetRefilled(gone);
    this.userPresenceSubscribes.forgetRefilled(gone);
    this.userTyping.forgetRefilled(gone);
    this.userListed.forgetRefilled(gone);
    this.userRead.forgetRefilled(gone);
    for (const ws of this.wss.clients) {
      if (!this.alive.has(ws)) {
        // No pong since the last ping: dropped without a close frame (the client sees 1006).
        this.options.metrics.closesTotal.inc({ code: "1006" });
        ws.terminate();
        continue;
      }
      this.alive.delete(ws);
      ws.ping();
    }
  }

  /** A group change of `userId` that adds or removes `members` members: 0, or ms to wait. */
  private takeGroupChange(userId: string, members: number): number {
    const byMembers = this.userGroupMembers.takeMany(userId, members);
    if (byMembers.waitMs > 0) return byMembers.waitMs;
    // A list longer than a group may be costs what the largest group does (as per user).
    const cost = Math.min(members, this.options.config.groups.membersMax);
    const byEveryone = this.groupMembers.takeIfAny(cost);
    if (byEveryone > 0) {
      byMembers.refund();
      return byEveryone;
    }
    const byCount = this.userGroupChanges.take(userId);
    if (byCount > 0) {
      byMembers.refund();
      this.groupMembers.refund(cost);
    }
    return byCount;
  }

  private takePullTyping(conversationId: string): boolean {
    let bucket = this.pullTyping.get(conversationId);
    if (bucket) this.pullTyping.delete(conversationId);
    else bucket = new TokenBucket(PULL_TYPING_PER_SECOND, PULL_TYPING_PER_SECOND);
    this.pullTyping.set(conversationId, bucket);
    if (this.pullTyping.size > PULL_TYPING_CONVERSATIONS_MAX) dropOldest(this.pullTyping);
    // Refusals take nothing: with debt, a group's typists renewing every few seconds would keep it
    // below zero, and nobody's indicator would go out.
    return bucket.takeIfAny() === 0;
  }

  /** Publishes the session's "up" (session-registration.ts). */
  private register(conn: Connection): Registration {
    this.awaitingAuth.delete(conn);
    let set = this.byUser.get(conn.userId);
    if (!set) {
      set = new Set();
      this.byUser.set(conn.userId, set);
    }
    set.add(conn);
    this.bySession.set(conn.sessionId, conn);
    this.options.metrics.connections.set(this.bySession.size);
    return this.registrations.register({
      kind: "up",
      userId: conn.userId,
      sessionId: conn.sessionId,
      gatewayId: this.id,
      gatewayEpoch: this.epoch,
      ...(this.options.advertiseAddress ? { gatewayAddress: this.options.advertiseAddress } : {}),
    });
  }

  private unregister(conn: Connection): void {
    const set = this.byUser.get(conn.userId);
    set?.delete(conn);
    if (set?.size === 0) {
      this.byUser.delete(conn.userId);
      // Kept until they have refilled (swept with the pings): reconnecting is no way to a fresh burst.
      this.userSends.forgetIfRefilled(conn.userId);
      this.userGroupChanges.forgetIfRefilled(conn.userId);
      this.userGroupMembers.forgetIfRefilled(conn.userId);
      this.userPresenceSubscribes.forgetIfRefilled(conn.userId);
      this.userTyping.forgetIfRefilled(conn.userId);
      this.userListed.forgetIfRefilled(conn.userId);
      this.userRead.forgetIfRefilled(conn.userId);
    }
    if (!this.bySession.delete(conn.sessionId)) return;
    this.options.metrics.connections.set(this.bySession.size);
    const { userId, sessionId } = conn;
    const log = this.options.log;
    this.registrations.unregister({
      kind: "down",
      userId,
      sessionId,
      gatewayId: this.id,
      gatewayEpoch: this.epoch,
    });
    // Shard by shard: one that fails is asked again, alone (else its watches of the session stay
    // for as long as this gateway renews its lease there).
    for (const shard of presenceShards(this.options.presence)) {
      this.endSessionRetries.run(
        () => shard.endSession({ userId, sessionId }),
        (reason, err, attempts) => {
          if (reason === "closed") return;
          this.options.metrics.presence.endSessionFailures.inc({ outcome: "dropped" });
          log.warn("gateway: endSession failed", { sessionId, attempts, reason, err });
        },
      );
    }
  }

  /** The GatewayService implementation (Deliver, Drain, Stats). */
  service(): ServiceImpl<typeof GatewayService> {
    const gateway = this;
    return {
      async *deliver(requests, ctx) {
        let handled = 0;
        const incoming = requests[Symbol.asyncIterator]();
        // A closing gateway ends its Deliver streams itself, with OK: the routers then know it left
        // (no failure to warn about and re-dial), and the gRPC server's graceful shutdown need not
        // wait out its grace period for streams that never end by themselves. Not Promise.race with
        // a promise settled at close: each race would leave a reaction on it until then, one per
        // event for the gateway's whole life.
        let stopWaiting: ((r: IteratorResult<DeliverRequest>) => void) | undefined;
        const stop = () => stopWaiting?.({ done: true, value: undefined });
        gateway.deliverStreams.add(stop);
        try {
          while (!gateway.closed) {
            const next = await new Promise<IteratorResult<DeliverRequest>>((resolve, reject) => {
              stopWaiting = resolve;
              incoming.next().then(resolve, reject);
            });
            stopWaiting = undefined;
            if (next.done) break;
            const req = next.value;
            if (req.recheckInboxes) gateway.recheckInboxes(req.userIds);
            else if (req.close) gateway.closeSessions(req.sessionIds, req.close.code, req.close.reason);
            else if (tracing.on && req.traceparent) gateway.dispatchTraced(req);
            else gateway.dispatch(req.userIds, req.cursors, req.sessionIds, req.excludeSessionId, req.frame);
            if (++handled % CREDIT_EVERY_EVENTS === 0) yield { delivered: CREDIT_EVERY_EVENTS };
          }
        } finally {
          gateway.deliverStreams.delete(stop);
          // A router that died (or was cut off) may have held events for our connections: each one
          // looks at its inbox once, so nothing waits for the next message to reveal the gap.
          if (ctx.signal.aborted) gateway.recheckInboxes([]);
        }
      },
      async drain(req) {
        return { connections: gateway.drain(req.windowMs || gateway.options.config.gateway.drainWindowMs) };
      },
      async stats() {
        return {
          gatewayId: gateway.id,
          connections: gateway.connections,
          users: gateway.users,
          draining: gateway.draining,
          epoch: BigInt(gateway.epoch),
        };
      },
    };
  }

  /** dispatch() in a `deliver` span of the message's trace (the router's `route` span's child). */
  private dispatchTraced(req: DeliverRequest): void {
    // The consumer side of the router's delivery stream (a messaging hop of its own, which trace
    // backends draw as an edge from the router to this gateway).
    const span = startSpan(
      "deliver",
      { traceparent: req.traceparent },
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "switchboard",
          "messaging.operation.type": "process",
          "messaging.operation.name": "deliver",
        },
      },
    );
    const written = this.dispatch(req.userIds, req.cursors, req.sessionIds, req.excludeSessionId, req.frame);
    span.setAttributes({ "switchboard.gateway.id": this.id, "switchboard.connections": written });
    span.end();
  }

  /** Writes the frame to the connections it is for; returns how many. */
  private dispatch(
    userIds: string[],
    cursors: bigint[],
    sessionIds: string[],
    exclude: string,
    frame: import("../../gen/switchboard/client/v1/client_pb.js").ServerFrame | undefined,
  ): number {
    if (!frame) return 0;
    let written = 0;
    if (frame.kind.case === "message") {
      const event = frame.kind.value as MessageEvent;
      const message = event.message;
      if (!message) return 0;
      // One encoding of the message for all recipients; each frame differs only by its cursor, and a
      // pull message (no cursors, all 0) is one frame for every socket.
      const frames = new MessageEventFrames(message);
      const shared: Partial<Record<Encoding, string | Uint8Array>> = {};
      for (let i = 0; i < userIds.length; i++) {
        const conns = this.byUser.get(userIds[i]!);
        if (!conns) continue;
        const value = { message, cursor: cursors[i] ?? 0n };
        const cache: Partial<Record<Encoding, string | Uint8Array>> = value.cursor === 0n ? shared : {};
        for (const conn of conns) {
          if (conn.sessionId === exclude) continue;
          written++;
          const enc = conn.encoding;
          conn.deliverMessage(value, () => (cache[enc] ??= frames.frame(value.cursor, enc)));
        }
      }
      return written;
    }
    const cache: Partial<Record<Encoding, string | Uint8Array>> = {};
    // A presence change goes only to sessions that watch that user still (see Connection.presenceEvent).
    const presence = frame.kind.case === "presence" ? frame.kind.value.status : undefined;
    // A group change reached its members: their group lists are read anew for presence subscribes.
    if (frame.kind.case === "conversation") for (const u of userIds) this.contacts.forget(u);
    const send = (conn: Connection) => {
      if (conn.sessionId === exclude) return;
      if (presence && !conn.presenceEvent(presence)) return;
      written++;
      let data = cache[conn.encoding];
      if (data === undefined) {
        data = encodeServerFrame(frame, conn.encoding);
        cache[conn.encoding] = data;
      }
      conn.sendRaw(data);
    };
    for (const u of userIds) for (const conn of this.byUser.get(u) ?? []) send(conn);
    for (const s of sessionIds) {
      const conn = this.bySession.get(s);
      if (conn) send(conn);
    }
    return written;
  }

  /**
   * The live connections of `userIds` (all when empty) re-read their inboxes past what they delivered,
   * spread over a second so that a gateway of many connections does not read them all at once.
   */
  recheckInboxes(userIds: readonly string[]): void {
    const conns =
      userIds.length === 0
        ? this.bySession.values()
        : userIds.flatMap((u) => [...(this.byUser.get(u) ?? [])]);
    for (const conn of conns) {
      const t = setTimeout(() => conn.recheckInbox(), Math.floor(Math.random() * RECHECK_SPREAD_MS));
      t.unref();
    }
  }

  /** Closes these connections with `code` and `reason` (the server API's Disconnect). */
  closeSessions(sessionIds: readonly string[], code: number, reason: string): void {
    for (const id of sessionIds) this.bySession.get(id)?.close(code, reason);
  }

  /** Tells every client to reconnect elsewhere, closing them spread over `windowMs`; refuses new ones. */
  drain(windowMs: number): number {
    const started = !this.draining;
    this.draining = true;
    if (started) for (const listener of this.drainListeners) listener();
    const conns = [...this.all];
    for (const conn of conns) {
      conn.reply(0, {
        case: "reconnect",
        value: { reason: "draining", delayMsMin: 0, delayMsMax: windowMs },
      });
      const t = setTimeout(
        () => void conn.closeAfterReplies(CloseCode.SHUTDOWN, "draining", STOP_REPLIES_WAIT_MS),
        Math.floor(Math.random() * windowMs),
      );
      t.unref();
    }
    return conns.length;
  }

  /**
   * Renews this gateway's presence lease on every shard, every time, whatever else is under way.
   * Where a shard lost the watches (it restarted, or missed renewals past the lease) or its renewal
   * failed (its answer may have said so), every session subscribes the watches it has there again, a
   * few sessions at a time, and hears of each status that changed meanwhile (Connection.renewWatches):
   * a pass per shard, started here unless one is under way, and awaited (one under way is not: a
   * session's slow re-subscribe must not hold the renewals back until the lease lapses everywhere).
   */
  async renewWatches(): Promise<void> {
    if (this.closed) return;
    const { presence, log, metrics } = this.options;
    const watcherId = this.ctx.watcherId;
    const shards = presenceShards(presence);
    const answers = await Promise.allSettled(shards.map((s) => s.keepWatches({ watcherId })));
    const owe = (i: number) => this.watchesOwed.set(i, (this.watchesOwed.get(i) ?? 0) + 1);
    const unanswered = new Set<number>();
    answers.forEach((answer, i) => {
      if (answer.status === "rejected") {
        unanswered.add(i);
        if (!this.watchesOwed.has(i) && this.leaseTaken)
          metrics.presence.watchesLost.inc({ reason: "unanswered" });
        owe(i);
        log.warn("gateway: renewing presence watches failed", { shard: i, err: answer.reason });
      } else if (answer.value.watchesLost) {
        // The first renewal (the gateway's start) takes the lease: nothing was lost.
        if (this.leaseTaken) metrics.presence.watchesLost.inc({ reason: "lost" });
        owe(i);
      }
    });
    // A shard that did not answer now is subscribed again once it does.
    const passes = [...this.watchesOwed.keys()]
      .filter((i) => !unanswered.has(i) && !this.resubscribing.has(i))
      .map((i) => this.resubscribe(shards, i));
    await Promise.all(passes);
  }

  /** Subscribes every session's watches on shard `i` again (see renewWatches). */
  private async resubscribe(shards: ReturnType<typeof presenceShards>, i: number): Promise<void> {
    const { log, metrics } = this.options;
    const owedAt = this.watchesOwed.get(i);
    this.resubscribing.add(i);
    try {
      const shard = shards[i]!;
      const placed = (userId: string) => shards.length === 1 || presenceShardOf(userId, shards.length) === i;
      const conns = [...this.bySession.values()].filter((c) => c.watched.size > 0);
      let renewed = 0;
      let failed: unknown;
      await mapLimited(conns, WATCHES_RENEWED_CONCURRENT, async (conn) => {
        if (this.closed) return;
        try {
          renewed += await conn.renewWatches(shard, placed);
        } catch (err) {
          failed ??= err;
        }
      });
      metrics.presence.watchesRenewed.inc(renewed);
      if (this.closed) return;
      if (failed !== undefined) {
        log.warn("gateway: subscribing presence watches again failed", { shard: i, err: failed });
        return;
      }
      // Lost (or unanswered) again meanwhile: the next renewal subscribes them once more.
      if (this.watchesOwed.get(i) === owedAt) this.watchesOwed.delete(i);
      if (renewed > 0)
        log.info("gateway: presence had lost watches; subscribed again", { shard: i, watches: renewed });
    } finally {
      this.resubscribing.delete(i);
    }
  }

  async close(): Promise<void> {
    this.eventRelays.close();
    clearInterval(this.pingTimer);
    clearInterval(this.watchLeaseTimer);
    this.endSessionRetries.close();
    this.draining = true;
    this.closed = true;
    for (const stop of this.deliverStreams) stop();
    // Sends already accepted are answered first (their storage closes after the gateway).
    await Promise.all(
      [...this.all].map((conn) =>
        conn.closeAfterReplies(CloseCode.GOING_AWAY, "server shutting down", STOP_REPLIES_WAIT_MS),
      ),
    );
    // After the connections, whose "down"s are then on their way (the backends close after this).
    await this.registrations.close(STOP_REPLIES_WAIT_MS);
    this.wss.close();
  }
}
