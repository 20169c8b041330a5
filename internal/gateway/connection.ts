/**
 * One client WebSocket: authentication, frame validation, limits, request dispatch, and the
 * sync→live seam.
 *
 * The seam: a connection receives live message events only after it completed a sync (a page with
 * has_more=false). While syncing, live message events are dropped and the highest dropped cursor is
 * remembered; since the router writes inbox entries before it delivers, every dropped event is in the
 * inbox, and a "last" page is only declared last when no dropped event lies beyond it. After the
 * seam, an event at or below the delivered cursor is a duplicate and skipped, and a jump past
 * delivered+1 (an event lost between router and gateway) is filled from the inbox before going on.
 *
 * Messages of pull conversations (ADR 0010) are in no inbox and come with cursor 0. They flow once the
 * connection's first sync reached the seam, whatever the inbox seam does afterwards, in seq order per
 * conversation with repeats skipped; a gap is the client's to fetch by history (docs/protocol.md).
 */
import type {
  ClientFrame,
  History as HistoryValue,
  MessageEvent,
  Send as SendValue,
} from "../../gen/switchboard/client/v1/client_pb.js";
import type { Message, PresenceStatus } from "../../gen/switchboard/common/v1/common_pb.js";
import { Code } from "../../gen/switchboard/common/v1/common_pb.js";
import {
  bodyBytes,
  getManyWithinBytes,
  historyWithinBytes,
  type PageBytes,
} from "../backends/message-pages.js";
import type { AppendResult } from "../backends/types.js";
import {
  directConversationId,
  isValidConversationId,
  requireConversationId,
  toWireMessage,
} from "../conversations/index.js";
import { atTime, type TimerHandle } from "../lib/at-time.js";
import { type Identity, isValidUserId } from "../lib/auth.js";
import { dropOldest } from "../lib/drop-oldest.js";
import { errors, forClients, SwitchboardError } from "../lib/errors.js";
import { inTime } from "../lib/in-time.js";
import type { Limiter } from "../lib/limiter.js";
import { inSpan, type Span, SpanKind, tracing } from "../lib/tracing.js";
import { WATCHES_PER_SESSION_MAX } from "../presence/index.js";
import { CloseCode } from "./close-codes.js";
import {
  decodeClientFrame,
  type Encoding,
  encodeServerFrame,
  peekRequest,
  type ServerFrameInit,
  wholeCharacters,
} from "./codec.js";
import { Throttle, TokenBucket } from "./rate-limit.js";
import { answerRequest, pageLimit } from "./requests.js";
import { SendGaps } from "./send-gaps.js";
import type { EventRelays, GatewayServices } from "./services.js";
import type { Registration } from "./session-registration.js";
import { verifyInTime } from "./verify-in-time.js";

/** The optional protocol features this gateway understands (`welcome.features`). */
const PROTOCOL_FEATURES = ["first_attempt", "member_pages"];

/** Pull conversations a connection remembers the last sent seq of. */
const PULL_CONVERSATIONS_TRACKED_MAX = 1_000;
/**
 * Group changes, rate-limited together per user: the ones told to every member however large the
 * group, and the membership changes, each of which the sequencer of the group's partition re-reads
 * the member list for (distributed backend) and a removal of which is kept a week (ADR 0012).
 */
const GROUP_CHANGES = new Set<string | undefined>([
  "createGroup",
  "updateGroup",
  "setMemberRole",
  "addMembers",
  "removeMembers",
  "joinGroup",
  "leaveGroup",
]);
/** Requests that list what may be hundreds of rows, each read from storage. */
const LISTINGS = new Set<string | undefined>(["listConversations", "listMembers", "listReceipts"]);
/**
 * Listings of one connection unanswered at once: the one being answered and those waiting for their
 * turn (they run one at a time, in order); past it one is refused RATE_LIMITED.
 */
const LISTINGS_UNANSWERED_MAX = 10;
/**
 * How long a listing, sync or history page waits for its user's budget (listings: entries; pages:
 * body bytes) before it is refused RATE_LIMITED.
 */
const BUDGET_WAIT_MAX_MS = 2_000;
/**
 * A connection's `typing: true` in one conversation goes out again while it is shown (a client's
 * renewal) at most this often, and in a pull conversation at most this often whatever came between.
 * Below the 3 s at which clients renew (web/src/typing.ts), so that a renewal the network brought
 * early is not dropped and the watchers' 6 s expiry never runs out while the user types.
 */
const TYPING_REPEAT_INTERVAL_MS = 2_000;
/** Typing indicators one connection has relayed per second in all its conversations (burst twice that). */
const CONNECTION_TYPING_PER_SECOND = 10;
/** Conversations whose typing state a connection keeps (those it typed in most recently). */
const TYPING_CONVERSATIONS_TRACKED_MAX = 1_000;

/** The entries a listing's reply holds (what its storage reads were for). */
function listedEntries(reply: NonNullable<ServerFrameInit["kind"]>): number {
  switch (reply.case) {
    case "conversations":
      return reply.value.conversations?.length ?? 0;
    case "members":
      return reply.value.members?.length ?? 0;
    case "receipts":
      return reply.value.receipts?.length ?? 0;
    default:
      return 0;
  }
}

/** What a connection needs from its gateway: its services, plus the registry and shared limits. */
export interface GatewayContext extends GatewayServices, EventRelays {
  /** Per-user send limit across all the user's connections; 0 or ms to wait. */
  takeUserSend(userId: string): number;
  /**
   * Per-user limit on group changes across the user's connections, and on the members they add or
   * remove (`members`: the request's member list); 0 or ms to wait.
   */
  takeGroupChange(userId: string, members: number): number;
  /** Whether this gateway relays one more typing indicator to a pull conversation now. */
  takePullTyping(conversationId: string): boolean;
  /**
   * Takes one of the typing indicators this gateway relays of `userId` (any conversation): what gives
   * it back (another limit refused the indicator), or undefined when there is none.
   */
  takeUserTyping(userId: string): (() => void) | undefined;
  /** A listing of `userId` may start: 0, or ms until its listings have been paid for. */
  takeUserListing(userId: string): number;
  /** What a listing of `userId` returned beyond the one entry takeUserListing took. */
  chargeUserListing(userId: string, entries: number): void;
  /** A sync or history page of `userId` may be read: 0, or ms until its pages have been paid for. */
  takeUserRead(userId: string): number;
  /** The body bytes a page of `userId` returned beyond the one takeUserRead took. */
  chargeUserRead(userId: string, bytes: number): void;
  /** Per-user limit on presence subscribes across the user's connections; 0 or ms to wait. */
  takePresenceSubscribe(userId: string): number;
  /** Listings being answered in this gateway process (LISTINGS_IN_FLIGHT_MAX at once). */
  listings: Limiter;
  /**
   * The first of `others` who shares no conversation with `user` (docs/protocol.md §4), if any; once
   * `signal` aborts, it reads no more (and fails).
   */
  firstStranger(user: string, others: readonly string[], signal?: AbortSignal): Promise<string | undefined>;
  /** Whether the user may open one more connection here (gateway.userConnectionsMax). */
  hasRoomFor(userId: string): boolean;
  /** Enters the session in the routing table (session-registration.ts). */
  register(conn: Connection): Registration;
  unregister(conn: Connection): void;
  /** This gateway instance, as presence knows the holder of its sessions' watches. */
  watcherId: string;
}

type Request = NonNullable<ClientFrame["kind"]>;
type Socket = import("ws").WebSocket;

export const PRESENCE_TARGETS_PER_REQUEST_MAX = 100;
/**
 * subscribePresence requests of one connection unanswered at once: the one being handled and those
 * waiting for their turn (they run one at a time, in order with its unsubscribes); past it one is
 * refused RATE_LIMITED. A client renewing its watches sends them one after another.
 */
const PRESENCE_SUBSCRIBES_UNANSWERED_MAX = 10;
/**
 * How long a subscribePresence's contact check may take (its membership reads: on Cassandra up to
 * about 140 one after another, each allowed 30 s) before it is answered DEADLINE_EXCEEDED and the
 * connection's next presence request has its turn; the check stops at its next read.
 */
const PRESENCE_CHECK_DEADLINE_MS = 15_000;
/**
 * How long a typing indicator may take to reach a router, every router tried included: past it the
 * request is answered with an error and no router relays it any more (RelayRequest.expires_at_ms).
 */
const TYPING_RELAY_TIMEOUT_MS = 5_000;
/**
 * How long a flooded connection waits for the replies of the requests it had accepted before it
 * closes (3013): longer than a send's own bound (kafka.appendTimeoutMs and the call deadline across
 * processes, 10 s each), so every accepted send is answered with its ack or its error.
 */
const FLOOD_REPLIES_WAIT_MS = 15_000;
/**
 * How long a connection closed by a stop or a drain (1001, 3001) waits for the replies of the requests
 * it had accepted: a send appended in that time is acknowledged rather than left for the client to
 * resend. Shorter than a flood's wait, as it holds the process's stop (shutdownTimeoutMs, 30 s).
 */
export const STOP_REPLIES_WAIT_MS = 2_000;
/**
 * A gap left by a refused send closes by itself after this long without its resend (a client that
 * gave up on it); it needs to outlast only the sends in flight when the client learned of it.
 */
const SEND_GAP_LIFETIME_MS = 10_000;
const authRequired = () =>
  errors.unauthenticated("AUTH_REQUIRED", "authenticate first (auth frame or Authorization header)");

/** Re-reads of an inbox page that is empty though a live event past it arrived (see pageUpTo). */
const EMPTY_READS_RETRIED = 3;

/**
 * The close code `ws` closes a connection with after a frame it refused (its errors' `code`), or
 * undefined for another error: 1009 a frame over gateway.frameBytesMax, 1007 text that is not UTF-8,
 * 1002 a frame that breaks RFC 6455.
 */
function wsCloseCode(err: Error): number | undefined {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string" || !code.startsWith("WS_ERR_")) return undefined;
  if (code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") return 1009;
  if (code === "WS_ERR_INVALID_UTF8") return 1007;
  return 1002;
}

/** Ends a request chain's link without its value (see presenceOrder, listingOrder). */
const settled = (): undefined => undefined;

export class Connection {
  readonly sessionId: string;
  identity: Identity | undefined;
  encoding: Encoding;
  private readonly frames: TokenBucket;
  private readonly sends: TokenBucket;
  private badFrames = 0;
  private closed = false;
  /**
   * Flooded, or its gateway stops or drains: no more frames are read; the accepted requests are
   * answered, then it closes (`stopped` resolves then).
   */
  private stopping = false;
  /** The close under way is a flood's (3013), not a stop's or a drain's. */
  private closingFlooded = false;
  private stopped: Promise<void> | undefined;
  /** Ends closeAfterReplies's wait for the replies now (its bound ran out). */
  private endWait: (() => void) | undefined;
  /**
   * Requests being handled (each settles once its reply is written). A count, not a Set of them: a
   * long-lived Set's add and delete per frame resize its table in the old generation (garbage for a
   * major GC).
   */
  private inFlight = 0;
  /** Called when the last request in flight settles (closeAfterReplies waits for it). */
  private onIdle: (() => void) | undefined;
  private authTimer: NodeJS.Timeout | undefined;
  private expiryTimer: TimerHandle | undefined;
  private lastHeartbeatMs = 0;
  private authenticating = false;
  /**
   * The welcome is written: requests (other than auth) are served from then on, never before, so a
   * request that overtakes the welcome is refused the same way however fast authentication went.
   */
  private welcomed = false;
  /**
   * Frames written between registration and the welcome (events of the user's other devices and
   * conversations), held so that the welcome is the first frame of an authenticated connection.
   */
  private heldForWelcome: Array<string | Uint8Array> | undefined;
  private heldBytes = 0;
  /** Sends of one connection are appended in the order they arrived (see `send`). */
  private sendOrder: Promise<void> = Promise.resolve();
  /** ...and a send refused for a retryable reason holds back the later ones to its conversation. */
  private readonly sendGaps = new SendGaps(SEND_GAP_LIFETIME_MS);
  /** Sends received on this connection: each send's place among them, for its gap (send-gaps.ts). */
  private sendsArrived = 0;
  /** Syncs of one connection run one at a time; a new one cancels a running catch-up. */
  private syncOrder: Promise<void> = Promise.resolve();
  private historyOrder: Promise<void> = Promise.resolve();
  private syncEpoch = 0;
  // Seam state (see the file comment).
  private live = false;
  private deliveredCursor = 0;
  private droppedCursorMax = 0;
  private catchingUp = false;
  /**
   * A catch-up stopped for a client sync (which owns the seam from then on): owed again if that sync is
   * refused before it takes the seam over, or the connection would stay not live.
   */
  private catchUpStopped = false;
  /** The epoch of the last sync refused before it took the seam over (0: none). */
  private refusedSyncEpoch = 0;
  /** The epoch of the last sync that took the seam over (0: none). */
  private seamSyncEpoch = 0;
  /** A recheck of the inbox asked for while the connection was not live: done once it is. */
  private recheckOwed = false;
  /** Pull conversations' messages flow (the first sync reached the seam). */
  private pullLive = false;
  /** The last seq sent per pull conversation, to skip repeats (bounded: the oldest goes). */
  private readonly pullSeqs = new Map<string, number>();
  /**
   * The users this session watches (presence), to subscribe again if presence lost them (a presence
   * shard restarted), each with the status the client was last told (online; undefined while its
   * snapshot is on its way). At most the presence service's per-session limit: it refuses more.
   */
  readonly watched = new Map<string, boolean | undefined>();
  /**
   * Presence requests of this connection run one at a time, in the order they came: an unsubscribe
   * is never overtaken by the subscribe before it, and one connection's subscribes (each up to
   * hundreds of membership reads) never run side by side.
   */
  private presenceOrder: Promise<unknown> = Promise.resolve();
  private presenceSubscribesUnanswered = 0;
  /** Listings of this connection run one at a time, in the order they came (LISTINGS_UNANSWERED_MAX). */
  private listingOrder: Promise<unknown> = Promise.resolve();
  private listingsUnanswered = 0;
  /** When this connection's `typing: true` last went out, per conversation (TYPING_REPEAT_INTERVAL_MS). */
  private readonly typingRepeats = new Throttle(TYPING_REPEAT_INTERVAL_MS, TYPING_CONVERSATIONS_TRACKED_MAX);
  /** Conversations whose members were last told by this connection that its user is typing. */
  private readonly typingShown = new Set<string>();
  /** Typing requests of this connection, decided one at a time in the order they came. */
  private typingOrder: Promise<unknown> = Promise.resolve();
  /** Typing indicators this connection relays (CONNECTION_TYPING_PER_SECOND); a refusal takes nothing. */
  private readonly typingTokens = new TokenBucket(
    CONNECTION_TYPING_PER_SECOND,
    CONNECTION_TYPING_PER_SECOND * 2,
  );

  constructor(
    private readonly ctx: GatewayContext,
    private readonly socket: Socket,
    sessionId: string,
    encoding: Encoding,
  ) {
    this.sessionId = sessionId;
    this.encoding = encoding;
    const g = ctx.config.gateway;
    this.frames = new TokenBucket(g.framesPerSecond, g.framesPerSecond * 2);
    this.sends = new TokenBucket(g.sendsPerSecond, g.sendBurst);
    socket.on("message", (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    socket.on("close", () => this.onClosed());
    socket.on("error", (err) => {
      // A frame the WebSocket layer refused: it closes the connection itself, with this code.
      const refused = wsCloseCode(err);
      if (refused !== undefined) ctx.metrics.closesTotal.inc({ code: String(refused) });
      ctx.log.debug("gateway: socket error", { sessionId, err });
    });
  }

  get userId(): string {
    return this.identity?.userId ?? "";
  }

  /** Starts the authentication deadline for connections that did not authenticate on upgrade. */
  awaitAuth(): void {
    this.authTimer = setTimeout(
      () => this.close(CloseCode.AUTH_TIMEOUT, "authentication timeout"),
      this.ctx.config.auth.authTimeoutMs,
    );
  }

  /** Sets up the session of a verified connection and welcomes it (in `encoding`: its auth frame's). */
  async authenticate(identity: Identity, replyTo: number, encoding: Encoding = this.encoding): Promise<void> {
    // Closed, or closing, while its token was checked (client gone, auth deadline, a stop or a
    // drain): never registered. An auth frame read before a stop or drain began is answered, as every
    // request read before it is (docs/protocol.md §2); the stop's close follows.
    if (this.closed) return;
    if (this.stopping) {
      if (replyTo !== 0)
        this.fail(
          replyTo,
          this.closingFlooded
            ? errors.exhausted("RATE_LIMITED", "too many frames: the connection closes (3013)", 1000)
            : errors.unavailable("GATEWAY_STOPPING", "the gateway is stopping or draining; connect again"),
          encoding,
          "auth",
        );
      return;
    }
    clearTimeout(this.authTimer);
    // Checked in the same turn as the registration below, so that concurrent ones cannot all pass.
    if (!this.ctx.hasRoomFor(identity.userId)) {
      const err = errors.exhausted(
        "TOO_MANY_CONNECTIONS",
        `the user already holds ${this.ctx.config.gateway.userConnectionsMax} connections on this gateway`,
      );
      // An auth frame gets its answer; a header-authenticated upgrade has no request to answer.
      if (replyTo !== 0) this.fail(replyTo, err, encoding, "auth");
      else
        this.ctx.metrics.errorsTotal.inc({ reason: err.reason, code: "RESOURCE_EXHAUSTED", request: "auth" });
      return this.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user");
    }
    this.identity = identity;
    if (Number.isFinite(identity.expiresAtMs))
      this.expiryTimer = atTime(identity.expiresAtMs, () =>
        this.close(CloseCode.TOKEN_EXPIRED, "token expired"),
      );
    // Registered first, so that nothing delivered from now on is missed; held until the welcome.
    // A registration not written in time (the routing table unreachable) does not keep the client
    // from syncing and reading: it is welcomed, and looks at its inbox once the registration lands.
    this.heldForWelcome = [];
    const registration = this.ctx.register(this);
    const inTime = await registration.inTime;
    if (this.closed) return;
    if (!inTime) void registration.written.then(() => this.recheckInbox());
    this.touchPresence(true);
    const head = await this.ctx.backends.inbox.head(identity.userId);
    const g = this.ctx.config.gateway;
    const held = this.heldForWelcome;
    this.heldForWelcome = undefined;
    this.reply(
      replyTo,
      {
        case: "welcome",
        value: {
          userId: identity.userId,
          sessionId: this.sessionId,
          heartbeatIntervalMs: this.ctx.config.presence.heartbeatIntervalMs,
          limits: {
            bodyCharsMax: g.bodyCharsMax,
            frameBytesMax: g.frameBytesMax,
            sendsPerSecond: g.sendsPerSecond,
            groupMembersMax: this.ctx.config.groups.membersMax,
          },
          serverTimeMs: BigInt(Date.now()),
          headCursor: BigInt(head),
          features: PROTOCOL_FEATURES,
          dataSet: this.ctx.backends.dataSet,
        },
      },
      encoding,
    );
    this.welcomed = true;
    for (const frame of held) this.sendRaw(frame);
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closed || this.stopping) return;
    this.encoding = isBinary ? "binary" : "json";
    if (this.frames.take() > 0) {
      if (this.frames.flooded())
        return void this.closeAfterReplies(CloseCode.TOO_MANY_REQUESTS, "too many frames");
      this.ctx.metrics.errorsTotal.inc({
        reason: "RATE_LIMITED",
        code: "RESOURCE_EXHAUSTED",
        request: "none",
      });
      return; // over the frame rate: dropped silently until it becomes a flood
    }
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(data, isBinary);
    } catch (err) {
      const e = SwitchboardError.from(err);
      if (e.reason !== "INVALID_UNICODE") return this.rejectBadFrame(0, e);
      // A request like any other but for its text (e.g. a body cut inside a surrogate pair): it is
      // answered under its own id, and it is not a malformed frame (no step towards 3501).
      const { id, request } = peekRequest(data, isBinary);
      // Before the welcome, a request other than auth is refused for that, whatever its text.
      const refusal = this.welcomed || request === "auth" ? e : authRequired();
      return this.fail(id, refusal, isBinary ? "binary" : "json", request);
    }
    const kind = frame.kind;
    if (kind.case === undefined)
      return this.rejectBadFrame(frame.id, errors.invalid("UNKNOWN_FRAME", "frame has no known request"));
    this.ctx.metrics.framesTotal.inc({ kind: kind.case });
    if (!this.welcomed && kind.case !== "auth") {
      return this.fail(frame.id, authRequired());
    }
    const encoding: Encoding = isBinary ? "binary" : "json";
    const handled = this.dispatch(frame.id, kind, encoding).catch((err: unknown) =>
      this.fail(frame.id, SwitchboardError.from(err), encoding, kind.case),
    );
    this.inFlight++;
    void handled.finally(() => {
      if (--this.inFlight === 0) this.onIdle?.();
    });
  }

  /**
   * Closes the connection without losing what it was promised: frames are no longer read, the
   * requests already accepted get their replies (the acks of sends already appended among them), and
   * then, or after `waitMs` at most, the connection closes with `code`. Resolves once it is closed. A
   * second call (a stop during a flood's wait) gets the first's promise, and its own bound holds too:
   * the connection closes (with the first call's code) when the earlier of the two runs out.
   */
  closeAfterReplies(code: number, reason: string, waitMs = FLOOD_REPLIES_WAIT_MS): Promise<void> {
    if (this.closed) return this.stopped ?? Promise.resolve();
    setTimeout(() => this.endWait?.(), waitMs).unref();
    if (this.stopped) return this.stopped;
    this.stopping = true;
    this.closingFlooded = code === CloseCode.TOO_MANY_REQUESTS;
    const waited = new Promise<void>((resolve) => {
      this.endWait = resolve;
    });
    this.stopped = new Promise<void>((stopped) => {
      // The request being dispatched now is registered once this call returns: look a turn later.
      setImmediate(() => {
        const idle =
          this.inFlight === 0
            ? Promise.resolve()
            : new Promise<void>((resolve) => {
                this.onIdle = resolve;
              });
        void Promise.race([idle, waited]).then(() => {
          this.endWait = undefined;
          this.close(code, reason);
          stopped();
        });
      });
    });
    return this.stopped;
  }

  private rejectBadFrame(id: number, err: SwitchboardError): void {
    this.fail(id, err);
    if (++this.badFrames >= this.ctx.config.gateway.badFramesMax)
      this.close(CloseCode.BAD_REQUEST, "too many malformed frames");
  }

  private async dispatch(id: number, req: Request, encoding: Encoding): Promise<void> {
    const user = this.userId;
    const c = this.ctx;
    // Replies use the encoding of their request (pushed events use the connection's latest).
    const reply = (kind: NonNullable<ServerFrameInit["kind"]>) => this.reply(id, kind, encoding);
    if (GROUP_CHANGES.has(req.case)) {
      // Each reads the group's members and tells every one of them, and writes a row or two per
      // member it adds or removes: bounded per user, by count and by members.
      const members =
        req.case === "createGroup" || req.case === "addMembers" || req.case === "removeMembers"
          ? req.value.members.length
          : 0;
      const wait = c.takeGroupChange(user, members);
      if (wait > 0) throw errors.exhausted("RATE_LIMITED", "too many group changes; slow down", wait);
    }
    switch (req.case) {
      case "auth": {
        if (this.identity || this.authenticating) {
          throw errors.precondition("ALREADY_AUTHENTICATED", "connection is already authenticated");
        }
        this.authenticating = true;
        // The client authenticated in time (3502 is for one that did not); checking the token now
        // has its own deadline, so a key set that cannot be fetched is AUTH_UNAVAILABLE and 1011.
        clearTimeout(this.authTimer);
        let identity: Identity;
        try {
          identity = await verifyInTime(this.ctx.verify, req.value.token, this.ctx.config.auth.authTimeoutMs);
        } catch (err) {
          const e = SwitchboardError.from(err);
          this.fail(id, e, encoding, "auth");
          // An expired token is worth a reconnect with a fresh one, and so is a token that could not
          // be checked now (the key set unreachable); anything else is terminal.
          if (e.reason === "TOKEN_EXPIRED") return this.close(CloseCode.TOKEN_EXPIRED, "token expired");
          if (e.code === Code.UNAVAILABLE)
            return this.close(CloseCode.INTERNAL_ERROR, "token could not be verified now");
          return this.close(CloseCode.INVALID_TOKEN, "invalid token");
        }
        try {
          return await this.authenticate(identity, id, encoding);
        } catch (err) {
          // Verified, but registering the session or reading its inbox head failed: without a
          // welcome the connection could serve nothing, so it closes and the client comes again.
          this.heldForWelcome = undefined;
          this.fail(id, SwitchboardError.from(err), encoding, "auth");
          return this.close(CloseCode.INTERNAL_ERROR, "registration failed");
        }
      }
      case "send": {
        const order = ++this.sendsArrived;
        const wait = this.sends.take() || c.takeUserSend(user);
        if (wait > 0) {
          if (this.sends.flooded()) void this.closeAfterReplies(CloseCode.TOO_MANY_REQUESTS, "send flood");
          const err = errors.exhausted("RATE_LIMITED", "too many messages; slow down", wait);
          const conversation = this.sendGapKey(req.value.target);
          if (conversation !== undefined)
            this.sendGaps.refused(conversation, req.value.clientMsgId, err, order);
          throw err;
        }
        if (!tracing.on) return this.send(req.value, order, reply);
        const traceparent = req.value.traceparent;
        return inSpan(
          "send",
          {
            kind: SpanKind.SERVER,
            ...(traceparent ? { parent: { traceparent } } : {}),
            attributes: { "switchboard.session.id": this.sessionId },
          },
          (span) => this.send(req.value, order, reply, span),
        );
      }
      case "sync": {
        const read = () => this.sync(Number(req.value.cursor), req.value.limit, reply);
        return tracing.on ? inSpan("sync", { kind: SpanKind.SERVER }, read) : read();
      }
      case "history": {
        // One history read at a time per connection, like syncs: each may load up to its byte
        // budget plus an overshoot (message-pages.ts), so a burst of them must not add up.
        const read = () => {
          const run = this.historyOrder.then(() =>
            this.closed ? undefined : this.history(req.value, reply),
          );
          this.historyOrder = run.then(
            () => undefined,
            () => undefined,
          );
          return run;
        };
        return tracing.on
          ? inSpan(
              "history",
              {
                kind: SpanKind.SERVER,
                attributes: { "switchboard.conversation.id": req.value.conversationId },
              },
              read,
            )
          : read();
      }
      case "typing": {
        const { conversationId, typing } = req.value;
        // Indicators past the limits are answered ok and dropped (docs/protocol.md §4). A stop goes
        // out only after a start that went out: it would otherwise bypass them, and nobody shows it.
        // Decided one at a time, in the order they came: a start and a stop whose membership reads
        // end in the other order must not leave the start shown and drop the stop.
        const decided = this.typingOrder.then(async () => {
          const { record } = await c.conversations.memberAccess(user, conversationId);
          return typing
            ? this.mayShowTyping(conversationId, record.delivery === "pull")
            : this.typingShown.delete(conversationId);
        });
        this.typingOrder = decided.then(settled, settled);
        if (!(await decided)) return reply({ case: "ok", value: {} });
        // Membership was checked above, with the record. One deadline for every router tried, and
        // a router that gets the relay after it (it was paused, or the network held the call) drops
        // it: a typing indicator shown late could outlive the typing: false sent after it.
        try {
          const userIds = await c.backends.membership.members(conversationId);
          const expiresAt = Date.now() + TYPING_RELAY_TIMEOUT_MS;
          await c.relays(conversationId).relay(
            {
              userIds,
              excludeSessionId: this.sessionId,
              frame: { kind: { case: "typing", value: { conversationId, userId: user, typing } } },
              expiresAtMs: BigInt(expiresAt),
            },
            { deadline: expiresAt },
          );
        } catch (err) {
          // A stop that did not go out leaves the start shown: the client's retry must go out.
          if (!typing) this.markTypingShown(conversationId);
          throw err;
        }
        return reply({ case: "ok", value: {} });
      }
      case "heartbeat":
        this.touchPresence(false);
        return reply({ case: "heartbeat", value: { serverTimeMs: BigInt(Date.now()) } });
      case "subscribePresence": {
        const targets = [...new Set(req.value.userIds)];
        if (
          targets.length === 0 ||
          targets.length > PRESENCE_TARGETS_PER_REQUEST_MAX ||
          !targets.every(isValidUserId)
        ) {
          throw errors.invalid(
            "INVALID_PRESENCE_TARGETS",
            `subscribe to 1-${PRESENCE_TARGETS_PER_REQUEST_MAX} valid user ids per request`,
          );
        }
        if (this.presenceSubscribesUnanswered >= PRESENCE_SUBSCRIBES_UNANSWERED_MAX)
          throw errors.exhausted(
            "RATE_LIMITED",
            "too many presence subscriptions unanswered; wait for their replies",
            1_000,
          );
        // Each may read hundreds of memberships: a user's are rate-limited together.
        const wait = c.takePresenceSubscribe(user);
        if (wait > 0)
          throw errors.exhausted("RATE_LIMITED", "too many presence subscriptions; slow down", wait);
        this.presenceSubscribesUnanswered++;
        // Refused in its turn, too: its reply comes before those of the requests after it.
        return this.inPresenceOrder(() =>
          this.subscribePresence(targets, reply).catch((err: unknown) =>
            this.fail(id, SwitchboardError.from(err), encoding, req.case),
          ),
        ).finally(() => {
          this.presenceSubscribesUnanswered--;
        });
      }
      case "unsubscribePresence": {
        const { userIds } = req.value;
        return this.inPresenceOrder(async () => {
          // Unwatched here at once: no event for these users reaches the client from now on.
          for (const t of userIds) this.watched.delete(t);
          // Closed: the session's end takes all its watches. A presence process that cannot be told
          // keeps relaying their changes to this gateway, which drops them, until the session ends
          // or the process restarts (and loses them): the client is answered ok either way.
          if (!this.closed)
            await c.presence.unsubscribe({ sessionId: this.sessionId, userIds }).catch((err: unknown) => {
              c.log.warn("gateway: presence unsubscribe failed; the watches end with the session", {
                sessionId: this.sessionId,
                err,
              });
            });
          reply({ case: "ok", value: {} });
        });
      }
      default: {
        // Groups, receipts, devices, notification settings: answered from the request alone.
        const caller = { userId: user, sessionId: this.sessionId };
        if (LISTINGS.has(req.case))
          return reply(await this.inListingOrder(() => answerRequest(c, caller, req)!));
        const answer = answerRequest(c, caller, req);
        if (!answer) throw errors.invalid("UNKNOWN_FRAME", "unknown request");
        return reply(await answer);
      }
    }
  }

  private async requireMember(conversationId: string): Promise<void> {
    requireConversationId(conversationId); // before any store sees it: ids are storage keys
    if (!(await this.ctx.backends.membership.isMember(conversationId, this.userId))) {
      throw errors.denied("NOT_MEMBER", `not a member of ${conversationId} (or it does not exist)`);
    }
  }

  /**
   * Reads one inbox page after `after`; reads again, briefly, while it is empty though a live event
   * past `after` arrived during the read (the entry is durable before its event is sent: the read
   * began before it was written). Undefined if it stays empty: the caller closes the connection so
   * the client resyncs, rather than go live below an event it dropped.
   */
  private async pageUpTo(
    after: number,
    limit: number,
  ): Promise<{ events: Array<{ message: Message; cursor: bigint }>; more: boolean } | undefined> {
    for (let attempt = 0; ; attempt++) {
      const page = await this.inboxPage(after, limit);
      if (page.events.length > 0 || page.more || this.droppedCursorMax <= after) return page;
      if (attempt >= EMPTY_READS_RETRIED || this.closed) return undefined;
      await new Promise((r) => setTimeout(r, 10 * (attempt + 1)));
    }
  }

  /** Charges a sync or history page to its user's read budget: its bodies' bytes (one was taken). */
  private chargeRead(messages: ReadonlyArray<{ body: string }>): void {
    let bytes = 0;
    for (const m of messages) bytes += bodyBytes(m.body);
    this.ctx.chargeUserRead(this.userId, Math.max(0, bytes - 1));
  }

  /** A sync or history page's byte bounds (message-pages.ts). */
  private pageBytes(): PageBytes {
    return {
      bytesMax: this.ctx.config.sync.pageBytesMax,
      bodyCharsMax: this.ctx.config.gateway.bodyCharsMax,
    };
  }

  /** Reads one inbox page after `after` and resolves its messages. */
  private async inboxPage(
    after: number,
    limit: number,
  ): Promise<{ events: Array<{ message: Message; cursor: bigint }>; more: boolean }> {
    const entries = await this.ctx.backends.inbox.read(this.userId, after, limit + 1);
    const page = entries.slice(0, limit);
    const { messages, complete } = await getManyWithinBytes(
      this.ctx.backends.messages,
      page,
      this.pageBytes(),
    );
    const cursorOf = new Map(page.map((e) => [`${e.conversationId}\u0000${e.seq}`, e.cursor]));
    const events = messages.map((m) => ({
      message: toWireMessage(m) as Message,
      cursor: BigInt(cursorOf.get(`${m.conversationId}\u0000${m.seq}`)!),
    }));
    return { events, more: !complete || entries.length > limit };
  }

  private sync(
    cursor: number,
    limit: number,
    reply: (kind: NonNullable<ServerFrameInit["kind"]>) => void,
  ): Promise<void> {
    const epoch = ++this.syncEpoch;
    const run = this.syncOrder.then(() => this.syncPage(cursor, limit, reply, epoch));
    this.syncOrder = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async syncPage(
    cursor: number,
    limit: number,
    reply: (kind: NonNullable<ServerFrameInit["kind"]>) => void,
    epoch: number,
  ): Promise<void> {
    // Syncs queue behind one another; one whose connection closed meanwhile reads nothing.
    if (this.closed) return;
    try {
      await this.budget((u) => this.ctx.takeUserRead(u), "message bytes read");
      if (this.closed) return;
      const head = await this.ctx.backends.inbox.head(this.userId);
      if (cursor < 0 || cursor > head)
        throw errors.invalid("INVALID_CURSOR", `cursor must be in [0, ${head}]`);
    } catch (err) {
      // Refused before it took the seam over: a catch-up it stopped (or is about to) goes on, unless
      // a later sync, which stops it too, is on its way.
      this.refusedSyncEpoch = epoch;
      if (this.catchUpStopped && epoch === this.syncEpoch && !this.closed) {
        this.catchUpStopped = false;
        void this.catchUp();
      }
      throw err;
    }
    this.catchUpStopped = false;
    this.seamSyncEpoch = epoch;
    this.live = false;
    const page = await this.pageUpTo(cursor, pageLimit(this.ctx.config, limit));
    if (!page) {
      this.close(CloseCode.INTERNAL_ERROR, "sync could not read the newest inbox entries");
      return;
    }
    const { events, more } = page;
    this.chargeRead(events.map((e) => e.message));
    const last = events.length > 0 ? Number(events[events.length - 1]!.cursor) : cursor;
    // Not last while an event dropped during the sync lies beyond this page (see file comment).
    const hasMore = more || this.droppedCursorMax > last;
    if (!hasMore) {
      this.live = true;
      this.pullLive = true;
      this.deliveredCursor = last;
      this.droppedCursorMax = 0;
    }
    reply({ case: "sync", value: { messages: events, cursor: BigInt(last), hasMore } });
    if (this.live && this.recheckOwed) {
      this.recheckOwed = false;
      void this.catchUp();
    }
  }

  /** A live message event for this connection's user (called by the gateway's Deliver loop). */
  deliverMessage(event: { message: Message; cursor: bigint }, encoded: () => string | Uint8Array): void {
    const cursor = Number(event.cursor);
    if (cursor === 0) {
      this.deliverPull(event.message, encoded);
      return;
    }
    if (!this.live) {
      if (cursor > this.droppedCursorMax) this.droppedCursorMax = cursor;
      return;
    }
    if (cursor <= this.deliveredCursor) return;
    if (cursor > this.deliveredCursor + 1) {
      this.droppedCursorMax = Math.max(this.droppedCursorMax, cursor);
      void this.catchUp();
      return;
    }
    this.deliveredCursor = cursor;
    // A delivery the connection closed on instead (a slow consumer) is no delivery to time.
    if (this.sendRaw(encoded()))
      this.ctx.metrics.deliverySeconds.observe((Date.now() - Number(event.message.createdAtMs)) / 1000);
  }

  /** A pull conversation's message: in seq order, each once (a router re-sends after a crash). */
  private deliverPull(message: Message, encoded: () => string | Uint8Array): void {
    if (!this.pullLive) return;
    const { conversationId } = message;
    const seq = Number(message.seq);
    if (seq <= (this.pullSeqs.get(conversationId) ?? 0)) return;
    this.pullSeqs.delete(conversationId);
    this.pullSeqs.set(conversationId, seq);
    if (this.pullSeqs.size > PULL_CONVERSATIONS_TRACKED_MAX) dropOldest(this.pullSeqs);
    // A delivery the connection closed on instead (a slow consumer) is no delivery to time.
    if (this.sendRaw(encoded()))
      this.ctx.metrics.deliverySeconds.observe((Date.now() - Number(message.createdAtMs)) / 1000);
  }

  /** Looks for inbox entries past the last delivered one (events a failed router stream lost). */
  recheckInbox(): void {
    if (this.closed) return;
    // A sync or catch-up whose read began before the lost entry was written would not see it.
    if (this.live) void this.catchUp();
    else this.recheckOwed = true;
  }

  /** Fills a gap in the live stream from the inbox, then resumes live delivery. */
  private async catchUp(): Promise<void> {
    if (this.catchingUp) return;
    this.catchingUp = true;
    this.live = false;
    let epoch = this.syncEpoch;
    try {
      for (;;) {
        // A client sync took over the seam; it decides when the connection is live again.
        if (this.closed || this.syncTookOver(epoch)) return this.stoppedForSync();
        epoch = this.syncEpoch;
        this.recheckOwed = false; // this read covers it
        const page = await this.pageUpTo(this.deliveredCursor, this.ctx.config.sync.pageSizeMax);
        // Also after the read: a sync that began meanwhile owns the seam (its reply comes first).
        if (this.closed || this.syncTookOver(epoch)) return this.stoppedForSync();
        epoch = this.syncEpoch;
        if (!page) {
          this.close(CloseCode.INTERNAL_ERROR, "catch-up could not read the newest inbox entries");
          return;
        }
        const { events, more } = page;
        for (const e of events) {
          this.sendRaw(
            encodeServerFrame(
              { kind: { case: "message", value: e as unknown as MessageEvent } },
              this.encoding,
            ),
          );
          this.deliveredCursor = Number(e.cursor);
        }
        if (!more && this.droppedCursorMax <= this.deliveredCursor && !this.recheckOwed) break;
      }
      this.live = true;
      this.droppedCursorMax = 0;
    } catch (err) {
      this.ctx.log.warn("gateway: catch-up failed; closing so the client resyncs", {
        sessionId: this.sessionId,
        err,
      });
      this.close(CloseCode.INTERNAL_ERROR, "catch-up failed");
    } finally {
      this.catchingUp = false;
    }
  }

  /**
   * Whether a client sync asked for since `epoch` owns the seam, or may: one took it over, or the last
   * one was not refused before it could (a refused one leaves the seam to the catch-up).
   */
  private syncTookOver(epoch: number): boolean {
    if (this.seamSyncEpoch > epoch) return true;
    return epoch !== this.syncEpoch && this.refusedSyncEpoch !== this.syncEpoch;
  }

  /** A catch-up gives the seam to a client sync (catchUpStopped). */
  private stoppedForSync(): void {
    // Not when the sync has the seam already: it decides from here, and a later refusal leaves it so.
    if (!this.closed && this.seamSyncEpoch !== this.syncEpoch) this.catchUpStopped = true;
  }

  /** Runs `run` after the connection's earlier presence requests (see presenceOrder). */
  private inPresenceOrder<T>(run: () => Promise<T>): Promise<T> {
    const turn = this.presenceOrder.then(run);
    this.presenceOrder = turn.then(settled, settled); // holds no reply: the chain outlives it
    return turn;
  }

  /**
   * A listing at its turn: after this connection's earlier ones, once its user's budget has room
   * (waited for outside the gateway's places, which it holds nobody else's listing from), and once
   * one of the gateway's LISTINGS_IN_FLIGHT_MAX places is free; then counted against that budget by
   * the entries it returned (one was taken before). Refused at once past LISTINGS_UNANSWERED_MAX
   * waiting.
   */
  private inListingOrder(
    answer: () => Promise<NonNullable<ServerFrameInit["kind"]>>,
  ): Promise<NonNullable<ServerFrameInit["kind"]>> {
    if (this.listingsUnanswered >= LISTINGS_UNANSWERED_MAX)
      throw errors.exhausted("RATE_LIMITED", "too many listings unanswered; wait for their replies", 1_000);
    this.listingsUnanswered++;
    const turn = this.listingOrder.then(async () => {
      await this.budget((u) => this.ctx.takeUserListing(u), "entries listed");
      const reply = await this.ctx.listings.run(answer);
      this.ctx.chargeUserListing(this.userId, Math.max(0, listedEntries(reply) - 1));
      return reply;
    });
    // Not the reply itself: a connection would keep its last listing (up to 5,000 members) alive.
    this.listingOrder = turn.then(settled, settled);
    return turn.finally(() => {
      this.listingsUnanswered--;
    });
  }

  /**
   * Takes one unit of a budget of the user's on this gateway (`take`: listing entries or page bytes),
   * waiting for it up to BUDGET_WAIT_MAX_MS: a client that reads a lot is slowed down, not failed.
   * Past that, RATE_LIMITED with the wait.
   */
  private async budget(take: (userId: string) => number, what: string): Promise<void> {
    const deadline = Date.now() + BUDGET_WAIT_MAX_MS;
    for (;;) {
      const waitMs = take(this.userId);
      if (waitMs === 0) return;
      if (Date.now() + waitMs > deadline)
        throw errors.exhausted("RATE_LIMITED", `too many ${what}; ask again after retryAfterMs`, waitMs);
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }

  /** A subscribePresence at its turn: checks and subscribes the users not watched yet. */
  private async subscribePresence(
    targets: string[],
    reply: (kind: NonNullable<ServerFrameInit["kind"]>) => void,
  ): Promise<void> {
    if (this.closed) return;
    const c = this.ctx;
    // Users watched already are neither new watches nor checked again.
    const fresh = targets.filter((t) => !this.watched.has(t));
    // The limit is the connection's: each presence shard holds only its own users' share of them.
    if (this.watched.size + fresh.length > WATCHES_PER_SESSION_MAX) {
      throw errors.exhausted(
        "TOO_MANY_WATCHES",
        `a connection may watch at most ${WATCHES_PER_SESSION_MAX} users`,
      );
    }
    const others = fresh.filter((t) => t !== this.userId);
    const stranger = others.length > 0 ? await this.firstStrangerInTime(others) : undefined;
    if (stranger !== undefined)
      throw errors.denied("NOT_A_CONTACT", `you share no conversation with ${stranger}`);
    // Watched from now: their events pass (presenceEvent) while the snapshot is on its way.
    for (const t of fresh) this.watched.set(t, undefined);
    let statuses: PresenceStatus[];
    try {
      ({ statuses } = await c.presence.subscribe({
        sessionId: this.sessionId,
        userIds: targets,
        watcherId: c.watcherId,
      }));
    } catch (err) {
      for (const t of fresh) this.watched.delete(t);
      throw err;
    }
    if (this.closed) {
      // Closed while subscribing: the session's end reached presence before these watches did.
      await c.presence.unsubscribe({ sessionId: this.sessionId, userIds: targets });
      return;
    }
    for (const s of statuses) this.watched.set(s.userId, s.online);
    reply({ case: "presenceSnapshot", value: { statuses } });
  }

  /**
   * The contact check of a subscribePresence, within PRESENCE_CHECK_DEADLINE_MS: past it the request
   * is refused DEADLINE_EXCEEDED (nothing subscribed) and the check told to stop, so that one slow
   * check holds the connection's later presence requests back no longer.
   */
  private firstStrangerInTime(others: string[]): Promise<string | undefined> {
    const abort = new AbortController();
    return inTime(
      this.ctx.firstStranger(this.userId, others, abort.signal),
      PRESENCE_CHECK_DEADLINE_MS,
      () => {
        abort.abort();
        return new SwitchboardError(
          Code.DEADLINE_EXCEEDED,
          "DEADLINE_EXCEEDED",
          `the contact check took longer than ${PRESENCE_CHECK_DEADLINE_MS / 1000} s; nothing was subscribed`,
          { retryAfterMs: 1_000 },
        );
      },
    );
  }

  /**
   * Whether a presence event goes to this client: only while it watches that user (a relay of a
   * change made before its unsubscribe may come after it), and only when it changes what the client
   * was last told. Remembers what the client was told.
   */
  presenceEvent(status: PresenceStatus): boolean {
    if (!this.watched.has(status.userId)) return false;
    // Not a transition: the status it was last told, sent again (a router re-sends what a failed
    // stream to this gateway may have lost).
    if (this.watched.get(status.userId) === status.online) return false;
    this.watched.set(status.userId, status.online);
    return true;
  }

  /**
   * Subscribes again, on `presence` (a shard that lost this gateway's watches), those watched users
   * `placed` says it holds, and tells the client of each whose status is not what it was last told
   * (a change while the watches were lost). Returns how many watches it renewed.
   *
   * Not in order with the connection's own presence requests: one of them may wait minutes on slow
   * reads, and the shard would go without these watches meanwhile. So a user unwatched while this
   * subscribe was on its way (an unsubscribe, or a subscribe that failed) is unsubscribed again
   * after it: whichever of the two calls presence took last, the watch ends.
   */
  async renewWatches(
    presence: Pick<GatewayServices["presence"], "subscribe" | "unsubscribe">,
    placed: (userId: string) => boolean,
  ): Promise<number> {
    if (this.closed) return 0;
    const userIds = [...this.watched.keys()].filter(placed);
    if (userIds.length === 0) return 0;
    const sessionId = this.sessionId;
    const { statuses } = await presence.subscribe({ sessionId, userIds, watcherId: this.ctx.watcherId });
    // Closed meanwhile: the session's end may have reached presence before these watches did.
    const unwatched = this.closed ? userIds : userIds.filter((u) => !this.watched.has(u));
    if (unwatched.length > 0) await presence.unsubscribe({ sessionId, userIds: unwatched });
    if (this.closed) return userIds.length;
    for (const status of statuses) {
      if (!this.watched.has(status.userId) || this.watched.get(status.userId) === status.online) continue;
      this.watched.set(status.userId, status.online);
      this.sendRaw(encodeServerFrame({ kind: { case: "presence", value: { status } } }, this.encoding));
    }
    return userIds.length;
  }

  /**
   * Whether this connection's `typing: true` in `conversationId` goes out now (and if so, it is
   * shown): a repeat while it is shown at most every 2 s, and within the connection's and its user's
   * budgets. A pull conversation (a large group, reaching every online member) takes a start at
   * most every 2 s per connection and a few a second per conversation on this gateway: a handful of
   * typists says what a hundred would.
   */
  private mayShowTyping(conversationId: string, pull: boolean): boolean {
    const repeat = pull || this.typingShown.has(conversationId);
    if (repeat && !this.typingRepeats.due(conversationId)) return false;
    // Each limit gives back what it took when a later one refuses: a refusal takes nothing.
    if (this.typingTokens.takeIfAny() > 0) return false;
    const giveBack = this.ctx.takeUserTyping(this.userId);
    if (!giveBack) {
      this.typingTokens.refund(1);
      return false;
    }
    if (pull && !this.ctx.takePullTyping(conversationId)) {
      giveBack();
      this.typingTokens.refund(1);
      return false;
    }
    this.typingRepeats.mark(conversationId);
    this.markTypingShown(conversationId);
    return true;
  }

  private markTypingShown(conversationId: string): void {
    this.typingShown.delete(conversationId);
    this.typingShown.add(conversationId);
    if (this.typingShown.size > TYPING_CONVERSATIONS_TRACKED_MAX) dropOldest(this.typingShown);
  }

  private touchPresence(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastHeartbeatMs < this.ctx.config.presence.heartbeatIntervalMs / 2) return;
    this.lastHeartbeatMs = now;
    this.ctx.presence
      .heartbeat({ userId: this.userId, sessionId: this.sessionId })
      .catch((err: unknown) => this.ctx.log.warn("gateway: presence heartbeat failed", { err }));
  }

  /** A page of a conversation's history (members only), bounded in messages and bytes. */
  private async history(
    value: HistoryValue,
    reply: (kind: NonNullable<ServerFrameInit["kind"]>) => void,
  ): Promise<void> {
    const c = this.ctx;
    const { conversationId, beforeSeq, afterSeq, limit } = value;
    // The budget first: a page that waited for it reads the membership as it is when it is read.
    await this.budget((u) => c.takeUserRead(u), "message bytes read");
    if (this.closed) return;
    await this.requireMember(conversationId);
    // Bounded in bytes too: the end nearest the cursor the client paged from.
    const page = await historyWithinBytes(
      c.backends.messages,
      conversationId,
      { beforeSeq: Number(beforeSeq), afterSeq: Number(afterSeq), limit: pageLimit(this.ctx.config, limit) },
      this.pageBytes(),
    );
    this.chargeRead(page.messages);
    reply({
      case: "history",
      value: { conversationId, messages: page.messages.map(toWireMessage), hasMore: page.hasMore },
    });
  }

  /** The conversation a send goes to, for its order (send-gaps.ts); undefined for a malformed target. */
  private sendGapKey(target: SendValue["target"]): string | undefined {
    if (target.case === "toUser")
      return isValidUserId(target.value) ? directConversationId(this.userId, target.value) : undefined;
    return target.case === "conversationId" && isValidConversationId(target.value) ? target.value : undefined;
  }

  /** Appends a message (in the order of this connection's sends) and acks it once it is durable. */
  private async send(
    value: SendValue,
    order: number,
    reply: (kind: NonNullable<ServerFrameInit["kind"]>) => void,
    span?: Span,
  ): Promise<void> {
    const c = this.ctx;
    const started = performance.now();
    // Taken now, before this send waits behind the connection's earlier ones (ADR 0002, "Dedupe
    // lookups"): a resend of it comes after this frame on this connection, or on another one once
    // the client gave up on this one; and this gateway closes a connection that has not answered
    // one ping by the next, so no frame trails a resend by more than two ping intervals.
    const resendsAfterMs = value.firstAttempt ? Date.now() - 2 * c.config.gateway.pingIntervalMs : undefined;
    const target = value.target;
    const { clientMsgId } = value;
    const conversation = this.sendGapKey(target);
    const gaps = this.sendGaps;
    // A gap's lifetime is judged by when this send arrived, not by when its turn came: a send that
    // arrived while the gap was young is held back even if earlier sends kept it waiting past that
    // lifetime (an id service that answers each call only at its deadline).
    const arrivedAtMs = Date.now();
    // Pipelined sends keep their order: each issues its append only after the previous one
    // issued its own, while the durable waits overlap (group commit). A refused one holds back the
    // later ones to its conversation until it comes again (send-gaps.ts): checked at its turn and
    // again right before the append, since an earlier send's append may fail in between.
    const issued = this.sendOrder.then(async () => {
      try {
        if (conversation !== undefined) gaps.pass(conversation, clientMsgId, order, arrivedAtMs);
        return await c.conversations.issue({
          sender: this.userId,
          ...(target.case === "toUser" ? { toUser: target.value } : { conversationId: target.value ?? "" }),
          clientMsgId,
          body: value.body,
          ...(resendsAfterMs === undefined ? {} : { firstAttemptResendsAfterMs: resendsAfterMs }),
          ...(conversation === undefined
            ? {}
            : { beforeAppend: () => gaps.pass(conversation, clientMsgId, order, arrivedAtMs) }),
        });
      } catch (err) {
        // Before the next send's turn: it must see the gap.
        if (conversation !== undefined) gaps.refused(conversation, clientMsgId, err, order);
        throw err;
      }
    });
    this.sendOrder = issued.then(
      () => undefined,
      () => undefined,
    );
    const { appended: durable } = await issued;
    let appended: AppendResult;
    try {
      appended = await durable;
    } catch (err) {
      // The append itself failed, after later sends were issued (Kafka refused it): those the
      // producer still held failed with it (kafka/batch-producer.ts), the rest are held back here.
      if (conversation !== undefined) gaps.refused(conversation, clientMsgId, err, order);
      throw err;
    }
    if (conversation !== undefined) gaps.settled(conversation, clientMsgId);
    const { message, duplicate } = appended;
    if (!duplicate) {
      c.metrics.messagesTotal.inc();
      c.metrics.appendSeconds.observe((performance.now() - started) / 1000);
    }
    span?.setAttributes({
      "switchboard.conversation.id": message.conversationId,
      "switchboard.message.id": message.messageId,
      "switchboard.seq": message.seq,
      "switchboard.duplicate": duplicate,
    });
    const traceId = span?.isRecording() ? span.spanContext().traceId : "";
    reply({
      case: "ack",
      value: {
        conversationId: message.conversationId,
        messageId: message.messageId,
        seq: BigInt(message.seq),
        clientMsgId: message.clientMsgId,
        createdAtMs: BigInt(message.createdAtMs),
        duplicate,
        traceId,
      },
    });
  }

  reply(
    replyTo: number,
    kind: NonNullable<ServerFrameInit["kind"]>,
    encoding: Encoding = this.encoding,
  ): void {
    this.sendRaw(encodeServerFrame({ replyTo, kind }, encoding));
  }

  /** Answers request `replyTo` with `err`; `request` is its kind (the frame's oneof case), for metrics. */
  fail(replyTo: number, error: SwitchboardError, encoding: Encoding = this.encoding, request = "none"): void {
    const err = forClients(error);
    if (err !== error)
      this.ctx.log.warn("gateway: a peer refused this gateway's credential", {
        sessionId: this.sessionId,
        err: error,
      });
    if (err.code === Code.INTERNAL)
      this.ctx.log.error("gateway: request failed", { sessionId: this.sessionId, err });
    this.ctx.metrics.errorsTotal.inc({
      reason: err.reason,
      code: Code[err.code] ?? String(err.code),
      request,
    });
    this.reply(
      replyTo,
      {
        case: "error",
        value: {
          code: err.code,
          reason: err.reason,
          message: wholeCharacters(err.publicMessage),
          retryAfterMs: err.retryAfterMs,
        },
      },
      encoding,
    );
  }

  /** Writes (or holds until the welcome) a frame; false if it was not, the connection closed instead. */
  sendRaw(data: string | Uint8Array): boolean {
    if (this.closed) return false;
    if (this.heldForWelcome) {
      // Bounded like the socket's own queue (a string counted at its largest UTF-8 size); held for
      // a few milliseconds at most, one inbox head read.
      this.heldBytes += typeof data === "string" ? data.length * 3 : data.length;
      if (this.heldBytes > this.ctx.config.gateway.sendQueueBytesMax) {
        this.close(CloseCode.SLOW_CONSUMER, "too many events before the welcome; reconnect and sync");
        return false;
      }
      this.heldForWelcome.push(data);
      return true;
    }
    if (this.socket.bufferedAmount > this.ctx.config.gateway.sendQueueBytesMax) {
      this.close(CloseCode.SLOW_CONSUMER, "send queue overflow; reconnect and sync");
      return false;
    }
    this.socket.send(data);
    return true;
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.ctx.metrics.closesTotal.inc({ code: String(code) });
    this.socket.close(code, reason);
    this.onClosed();
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.authTimer);
    this.expiryTimer?.clear();
    if (this.identity) this.ctx.unregister(this);
  }
}
