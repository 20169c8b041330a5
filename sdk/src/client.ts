/**
 * SwitchboardClient: one logical connection to a Switchboard gateway that survives reconnects.
 *
 * Guarantees, as seen by the app:
 * - Every message of the user's inbox is emitted once ("message"): after each (re)connect the client
 *   syncs from its cursor until has_more=false, and a bounded LRU of message ids drops repeats
 *   (the server may repeat, inside a sync, messages it delivered live before the sync).
 * - Every message of a pull conversation (a large group; its messages are in no inbox) is emitted
 *   once and in seq order too: live ones as they come, a gap before one fetched by history first,
 *   and after each sync what the conversations hold past the newest seq emitted (PullFollower).
 * - Every send() resolves once with the server's ack: an unacknowledged send is re-sent with the
 *   SAME clientMsgId after a reconnect, and the server's idempotency turns a resend of something it
 *   already stored into the original ack (duplicate=true), so nothing is stored twice. A send is
 *   given up (SEND_EXPIRED) `sendMaxAgeMs` after it was made, well inside the server's dedupe window.
 * - Where the device is (inbox cursor and pull positions) is one persistable `checkpoint`, handed to
 *   the app ("checkpoint" event) after the listeners of the messages it covers have run.
 */
import type { ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { ReceiptKind } from "../../gen/switchboard/common/v1/common_pb.js";
import { Provider } from "../../gen/switchboard/push/v1/push_pb.js";
import { type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import { type Conn, Connection } from "./connection.js";
import { ConversationChanges } from "./conversation-changes.js";
import { TypedEmitter } from "./emitter.js";
import { Code, fromWireError, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { type FrameKind, type ReplyCase, type ReplyOf, RequestTracker } from "./requests.js";
import { DEFAULT_SEND_MAX_AGE_MS, SendQueue } from "./sends.js";
import { InboxSync } from "./sync.js";
import type { AuthMode, Encoding, WebSocketConstructor } from "./transport.js";
import {
  type Checkpoint,
  type Conversation,
  type DisconnectInfo,
  type DoNotDisturbWindow,
  type GroupPolicyName,
  type HistoryPage,
  type IncomingMessage,
  type MemberList,
  type MemberReceipts,
  type MemberRoleName,
  type NotificationSettings,
  type PresenceStatus,
  policyToWire,
  type ReceiptInfo,
  roleToWire,
  type SendAck,
  type SyncedInfo,
  type TypingInfo,
  toConversation,
  toHistoryPage,
  toMember,
  toMemberReceipts,
  toPresence,
  toReceipt,
  toTyping,
  type WelcomeInfo,
} from "./types.js";

/** The push services a device token can belong to. */
export type PushProviderName = "webpush" | "apns" | "fcm" | "webhook";
/** `welcome.features` entry of a server whose listMembers answers pages (`after`, `limit`, `hasMore`). */
const MEMBER_PAGES_FEATURE = "member_pages";

const PUSH_PROVIDERS: Record<PushProviderName, Provider> = {
  webpush: Provider.WEBPUSH,
  apns: Provider.APNS,
  fcm: Provider.FCM,
  webhook: Provider.WEBHOOK,
};

/** A token, or a function returning one; the function is called again before every connection. */
export type TokenSource = string | (() => string | Promise<string>);

/**
 * A gateway URL, or a function returning one; the function is called again before every connection,
 * so a client can move to another gateway when its own goes away (e.g. by asking the platform's
 * /v1/connect, or by rotating over a list).
 */
export type UrlSource = string | (() => string | Promise<string>);

export interface SwitchboardClientOptions {
  /** Gateway URL, e.g. ws://localhost:8080/ws, or a function giving one per connection. Never put the token in it. */
  url: UrlSource;
  token: TokenSource;
  /**
   * Wire encoding. Default "json": frames are readable in browser devtools and proxies' logs.
   * "binary" (protobuf) is smaller and cheaper to parse; use it for high message rates.
   */
  encoding?: Encoding;
  /**
   * Where this device left off, as the "checkpoint" event (or `client.checkpoint`) gave it last time:
   * the inbox cursor and the pull conversations' positions. Default: nothing processed yet (sync from
   * 0). `cursor` and `pullPositions`, when given, take precedence over its fields.
   */
  checkpoint?: Checkpoint | undefined;
  /**
   * Inbox position this device already processed; default the checkpoint's, else 0 = everything.
   * Prefer `checkpoint`: the cursor alone does not say where the pull conversations were.
   */
  cursor?: number;
  /** Reconnect backoff (full jitter): default base 250 ms, max 10 s; at most half the outage so far (≥ 1 s). */
  reconnect?: Partial<BackoffOptions>;
  /** WebSocket implementation; default the global one, else the `ws` package (Node). */
  WebSocket?: WebSocketConstructor;
  /**
   * "header": Authorization header on the upgrade (the `ws` package only; a bad token fails with HTTP
   * 401 before the handshake). "frame": an auth frame after opening (browsers). Default: "header" when
   * the SDK loaded `ws` itself, else "frame".
   */
  auth?: AuthMode;
  /** Timeout of requests, of the welcome after opening, and of heartbeat answers; default 10 s. */
  requestTimeoutMs?: number;
  /**
   * Overall deadline of a send across reconnects; default 0 = none (keep trying until acked, or until
   * `sendMaxAgeMs`).
   */
  sendTimeoutMs?: number;
  /**
   * How long after it was made (`SendOptions.createdAtMs`, else the send() call) a send is given up
   * with reason SEND_EXPIRED, whatever `sendTimeoutMs` says; default 24 h. The server dedupes resends
   * only within its dedupe window (docs/protocol.md §3; 168 h by default on the distributed backend):
   * a resend after it would store the message again. 0: never give up (a resend after the window may
   * store a duplicate).
   */
  sendMaxAgeMs?: number;
  /** Most unacknowledged sends kept (queued or in flight); default 1,000. */
  maxPendingSends?: number;
  /** Most sends in flight on a connection at once (the rest wait their turn); default 64. */
  maxInflightSends?: number;
  /**
   * How many message ids the receive-side dedupe remembers; default 10,000. Also the most
   * conversations whose positions the checkpoint keeps: past it, the oldest push conversation's goes
   * first, a pull conversation's only when there is no other.
   */
  dedupeCapacity?: number;
  /**
   * The newest seq this device processed per pull conversation; default the checkpoint's. Messages
   * past them are fetched after the first sync. Prefer `checkpoint`.
   */
  pullPositions?: Record<string, number>;
  /** Page size asked for when syncing; default 0 = the server's default. */
  syncLimit?: number;
  /**
   * Sync the inbox on every (re)connect; default true. Turn off for send-only clients (e.g. a CLI
   * `send`) that never look at incoming messages.
   */
  autoSync?: boolean;
  /** Random source for jitter (tests). */
  random?: () => number;
}

export type ClientState = "idle" | "connecting" | "open" | "closed";

/** Events of SwitchboardClient, each with one payload. */
export interface SwitchboardClientEvents {
  /** A new message (never a duplicate), in inbox order. */
  message: IncomingMessage;
  /**
   * Where the device is now (inbox cursor and pull positions), after the "message" listeners of the
   * messages it covers have returned: persist it, and pass it back as the `checkpoint` option. Also
   * when positions move without a message (a pull conversation first listed, a resync from 0).
   */
  checkpoint: Checkpoint;
  typing: TypingInfo;
  presence: PresenceStatus;
  receipt: ReceiptInfo;
  /**
   * A group of mine was created, changed (name, open, policies, owner, roles) or gained or lost
   * members, by me (on this device too: the reply to the call comes as well) or by someone else: the
   * group as it is now. Best effort, like
   * typing; listConversations and listMembers tell the rest.
   */
  conversation: Conversation;
  /** The server's welcome on each (re)connect. */
  connected: WelcomeInfo;
  /**
   * The server's data was replaced since the checkpoint's positions were taken (restored from a
   * backup: `welcome.dataSet` is another): what the app stored of the old data may not exist on the
   * server, and seqs and cursors past the restored copy's are handed out again to new messages. The
   * client starts over from 0 and emits every message again, those emitted before included; drop
   * what you stored of messages (keyed by conversation and seq) before the "message" events that
   * follow.
   */
  dataSetChanged: { previous: string; current: string };
  /**
   * The connection ended, or an attempt to connect failed (once per attempt: a server down for a
   * while gives one per retry; show "offline" from the first and "online" at the next "connected").
   * `willReconnect` false means the client stays down.
   */
  disconnected: DisconnectInfo;
  /** A sync after (re)connect finished; live messages follow. */
  synced: SyncedInfo;
  /** Something went wrong that is not the rejection of a call (terminal close, failed sync, …). */
  error: SwitchboardClientError;
}

export type SendTarget = { conversationId: string } | { toUser: string };

export interface SendOptions {
  /** Idempotency key (1-64 printable ASCII); default a random UUID. Reuse it to retry safely. */
  clientMsgId?: string;
  /** Overall deadline for this send, ms (0 = none); default the client's sendTimeoutMs. */
  timeoutMs?: number;
  /**
   * When the message was made (Unix ms), if before this call: an outbox restored after a restart
   * passes the time it was first sent, so that `sendMaxAgeMs` counts from then. Default now.
   */
  createdAtMs?: number;
  /**
   * W3C trace context (a `traceparent` value) the server's spans for this message join; the ack's
   * `traceId` names the trace the server recorded it in (docs/protocol.md, "Tracing").
   */
  traceparent?: string;
}

export interface HistoryQuery {
  conversationId: string;
  /** Messages with seq below this (0/undefined: from the newest). */
  beforeSeq?: number;
  /** Messages with seq above this. */
  afterSeq?: number;
  limit?: number;
}

export interface CreateGroupInput {
  name: string;
  /** Initial members besides the creator. */
  members?: string[];
  /** Whether anyone may join without being added. */
  open?: boolean;
  /** Who may post; default everyone ("admins": an announcement channel). */
  postPolicy?: GroupPolicyName;
  /** Who may add members; default everyone. */
  addPolicy?: GroupPolicyName;
}

/** What updateGroup changes; what is left out stays as it is. */
export interface GroupChangeInput {
  name?: string;
  open?: boolean;
  postPolicy?: GroupPolicyName;
  addPolicy?: GroupPolicyName;
}

/** Most users one subscribePresence may name (docs/protocol.md: INVALID_PRESENCE_TARGETS past it). */
const PRESENCE_TARGETS_PER_REQUEST = 100;

/** A refused presence renewal's wait is drawn from this (or retryAfterMs) doubled per refusal... */
const PRESENCE_RENEWAL_WAIT_BASE_MS = 250;
/** ...up to this, unless the server's retryAfterMs says longer. */
export const PRESENCE_RENEWAL_WAIT_MAX_MS = 30_000;

/**
 * How long a presence renewal waits before asking again after its `refusals`-th refusal in a row
 * (RATE_LIMITED, or a server too slow to answer): at random between `retryAfterMs` and a ceiling
 * that doubles with each refusal (base 250 ms, or retryAfterMs if longer, times 2^refusals), at
 * most PRESENCE_RENEWAL_WAIT_MAX_MS. A user's tabs renewing at once share the server's per-user
 * limit: retrying after exactly `retryAfterMs` they would come back together, again and again; drawn
 * from a growing window they spread out, and each still ends.
 */
export function presenceRenewalWaitMs(
  retryAfterMs: number,
  refusals: number,
  random: () => number = Math.random,
): number {
  const floor = Math.max(0, retryAfterMs);
  const base = Math.max(floor, PRESENCE_RENEWAL_WAIT_BASE_MS);
  const ceiling = Math.max(floor, Math.min(PRESENCE_RENEWAL_WAIT_MAX_MS, base * 2 ** Math.min(refusals, 20)));
  return Math.ceil(floor + random() * (ceiling - floor));
}

/** A presence renewal's failure worth asking again for on the same connection (the server slow or busy). */
function renewalRetryable(err: unknown): err is SwitchboardClientError {
  if (!(err instanceof SwitchboardClientError)) return false;
  return (
    err.reason === "RATE_LIMITED" ||
    err.reason === LocalReason.TIMEOUT ||
    err.code === Code.UNAVAILABLE ||
    err.code === Code.DEADLINE_EXCEEDED
  );
}

const LOCAL_REASONS: ReadonlySet<string> = new Set(Object.values(LocalReason));
const isLocalReason = (reason: string): boolean => LOCAL_REASONS.has(reason);

/**
 * The public face of the SDK. The work is done by four parts it owns, one responsibility each:
 * connection.ts (sockets, welcome, heartbeats, drain, reconnects), requests.ts (request ids and
 * their replies), sends.ts (the exactly-once send pipeline) and sync.ts (cursor, sync seam, dedupe).
 * The client wires them together, routes the server's events and turns its methods into requests.
 */
export class SwitchboardClient extends TypedEmitter<SwitchboardClientEvents> {
  private readonly requestTimeoutMs: number;
  private readonly autoSync: boolean;
  private readonly requests: RequestTracker;
  private readonly connection: Connection;
  private readonly sends: SendQueue;
  private readonly inbox: InboxSync;
  private readonly presenceWatch = new Set<string>();
  /** Group changes seen, to keep a late event of an older one from the app. */
  private readonly conversationChanges = new ConversationChanges();
  /**
   * The users of each subscribePresence still waiting for its reply; an unsubscribe meanwhile takes
   * its users out, so that the reply does not watch them again.
   */
  private readonly presencePending = new Set<Set<string>>();
  /** Requests waiting out a RATE_LIMITED refusal before they ask again: woken when the client stops. */
  private readonly waits = new Set<{ timer: ReturnType<typeof setTimeout>; reject(err: unknown): void }>();
  /** Random source for jitter (the `random` option). */
  private readonly random: () => number;

  constructor(options: SwitchboardClientOptions) {
    super();
    const backoff = { ...DEFAULT_BACKOFF, ...options.reconnect };
    const random = options.random ?? Math.random;
    this.random = random;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.autoSync = options.autoSync ?? true;
    const encoding = options.encoding ?? "json";
    // The parts call each other back through these closures, which run only after the constructor.
    this.requests = new RequestTracker({
      encoding,
      isCurrent: (conn) => this.connection.isCurrent(conn),
      isClosed: () => this.connection.state === "closed",
    });
    this.connection = new Connection(
      {
        url: options.url,
        token: options.token,
        encoding,
        backoff,
        random,
        requestTimeoutMs: this.requestTimeoutMs,
        WebSocket: options.WebSocket,
        auth: options.auth,
        requests: this.requests,
      },
      {
        frame: (conn, frame) => this.onFrame(conn, frame),
        opened: (conn, welcome) => this.onOpened(conn, welcome),
        disconnected: (info) => this.emit("disconnected", info),
        error: (err) => this.emitError(err),
        failSends: (err) => this.stopped(err),
      },
    );
    this.sends = new SendQueue({
      requests: this.requests,
      openConnection: () => this.connection.open,
      welcome: () => this.connection.welcome,
      maxPending: options.maxPendingSends ?? 1_000,
      maxInflight: Math.max(1, options.maxInflightSends ?? 64),
      sendTimeoutMs: options.sendTimeoutMs ?? 0,
      maxAgeMs: options.sendMaxAgeMs ?? DEFAULT_SEND_MAX_AGE_MS,
      requestTimeoutMs: this.requestTimeoutMs,
      backoff,
      random,
    });
    this.inbox = new InboxSync({
      cursor: options.cursor ?? options.checkpoint?.cursor ?? 0,
      dedupeCapacity: options.dedupeCapacity ?? 10_000,
      pullPositions: options.pullPositions ?? options.checkpoint?.pullPositions,
      dataSet: options.checkpoint?.dataSet,
      emitDataSetChanged: (change) => this.emit("dataSetChanged", change),
      syncLimit: options.syncLimit ?? 0,
      requestTimeoutMs: this.requestTimeoutMs,
      backoff,
      random,
      requests: this.requests,
      connection: this.connection,
      history: (query) => this.history(query),
      emitMessage: (message) => this.emit("message", message),
      emitSynced: (info) => this.emit("synced", info),
      emitError: (err) => this.emitError(err),
      emitCheckpoint: (checkpoint) => this.emit("checkpoint", checkpoint),
    });
  }

  /**
   * Where this device is: the inbox cursor and the pull conversations' positions, as plain JSON.
   * Persist it once the messages before it are handled (the "checkpoint" event hands it over then)
   * and pass it back as the `checkpoint` option next time.
   */
  get checkpoint(): Checkpoint {
    return this.inbox.checkpoint;
  }

  /** The newest seq processed per pull conversation (part of `checkpoint`). */
  get pullPositions(): Record<string, number> {
    return this.inbox.pullPositions;
  }

  /** The highest inbox position processed (part of `checkpoint`). */
  get cursor(): number {
    return this.inbox.cursor;
  }

  get state(): ClientState {
    return this.connection.state;
  }

  /** The latest welcome (user id, limits, …), once connected. */
  get welcome(): WelcomeInfo | undefined {
    return this.connection.welcome;
  }

  /** Sends queued or in flight, not yet acknowledged. */
  get pendingSends(): number {
    return this.sends.size;
  }

  // ---------------------------------------------------------------- lifecycle

  /**
   * Starts the connection (and keeps it up from then on). Resolves with the welcome of the first
   * successful connection; rejects on a terminal failure, on close(), or after `timeoutMs` (the
   * client keeps trying in the background in that case; call close() to stop it).
   */
  connect(options: { timeoutMs?: number } = {}): Promise<WelcomeInfo> {
    return this.connection.connect(options);
  }

  /**
   * Closes for good (until connect() is called again): no reconnect; pending sends and requests
   * are rejected with reason CLOSED. Resolves once the socket has closed (at most ~1 s).
   */
  close(): Promise<void> {
    return this.connection.close(); // which calls stopped(CLOSED)
  }

  /**
   * The client stops for good (close() or a terminal close): unacknowledged sends and requests
   * waiting out a rate limit fail with `err`, and no timer is left behind (a Node process can exit).
   */
  private stopped(err: SwitchboardClientError): void {
    this.sends.failAll(err);
    this.sends.cancelPauseTimer();
    this.inbox.stop();
    for (const w of this.waits) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waits.clear();
  }

  // ---------------------------------------------------------------- messaging

  /**
   * Sends `body` to a conversation or a user and resolves with the server's ack, exactly once.
   * Unacknowledged sends survive reconnects and are re-sent with the same clientMsgId (which the
   * server dedupes), until acked or a non-retryable error. May be called before connect(): the send
   * waits in the queue.
   */
  send(target: SendTarget, body: string, options: SendOptions = {}): Promise<SendAck> {
    if (this.connection.state === "closed") {
      return Promise.reject(
        localError(Code.FAILED_PRECONDITION, LocalReason.NOT_CONNECTED, "client is closed"),
      );
    }
    return this.sends.enqueue(target, body, options);
  }

  /** Pages through one conversation's history. */
  async history(query: HistoryQuery): Promise<HistoryPage> {
    const res = await this.request(
      {
        case: "history",
        value: {
          conversationId: query.conversationId,
          beforeSeq: BigInt(wholeNumber(query.beforeSeq ?? 0, "beforeSeq")),
          afterSeq: BigInt(wholeNumber(query.afterSeq ?? 0, "afterSeq")),
          limit: wholeNumber(query.limit ?? 0, "limit", UINT32_MAX),
        },
      },
      "history",
    );
    return toHistoryPage(res);
  }

  async createGroup(input: CreateGroupInput): Promise<Conversation> {
    const res = await this.request(
      {
        case: "createGroup",
        value: {
          name: input.name,
          members: input.members ?? [],
          open: input.open ?? false,
          postPolicy: policyToWire(input.postPolicy),
          addPolicy: policyToWire(input.addPolicy),
        },
      },
      "conversation",
    );
    return this.conversationOf(res.conversation);
  }

  /** Renames a group, opens or closes it, or changes who may post or add (admins and the owner). */
  async updateGroup(conversationId: string, change: GroupChangeInput): Promise<Conversation> {
    const res = await this.request(
      {
        case: "updateGroup",
        value: {
          conversationId,
          ...(change.name !== undefined ? { name: change.name } : {}),
          ...(change.open !== undefined ? { open: change.open } : {}),
          postPolicy: policyToWire(change.postPolicy),
          addPolicy: policyToWire(change.addPolicy),
        },
      },
      "conversation",
    );
    return this.conversationOf(res.conversation);
  }

  /**
   * Gives a member of my group a role (only the owner may). Making someone "owner" hands the group
   * over; I stay on as an admin.
   */
  async setMemberRole(conversationId: string, userId: string, role: MemberRoleName): Promise<Conversation> {
    const res = await this.request(
      { case: "setMemberRole", value: { conversationId, userId, role: roleToWire(role) } },
      "conversation",
    );
    return this.conversationOf(res.conversation);
  }

  async addMembers(conversationId: string, members: string[]): Promise<Conversation> {
    const res = await this.request(
      { case: "addMembers", value: { conversationId, members } },
      "conversation",
    );
    return this.conversationOf(res.conversation);
  }

  /**
   * Removes members from a group: others only as an admin or the owner, never the owner; naming
   * myself is leaving. Users who are not members are ignored.
   */
  async removeMembers(conversationId: string, members: string[]): Promise<Conversation> {
    const res = await this.request(
      { case: "removeMembers", value: { conversationId, members } },
      "conversation",
    );
    return this.conversationOf(res.conversation);
  }

  /** Every member's delivered and read watermarks (what receipt events told before this connection). */
  async listReceipts(conversationId: string): Promise<MemberReceipts[]> {
    const res = await this.request({ case: "listReceipts", value: { conversationId } }, "receipts");
    return res.receipts.map(toMemberReceipts);
  }

  async joinGroup(conversationId: string): Promise<Conversation> {
    const res = await this.request({ case: "joinGroup", value: { conversationId } }, "conversation");
    return this.conversationOf(res.conversation);
  }

  async leaveGroup(conversationId: string): Promise<void> {
    await this.request({ case: "leaveGroup", value: { conversationId } }, "ok");
  }

  async listConversations(options: { limit?: number } = {}): Promise<Conversation[]> {
    const res = await this.request(
      { case: "listConversations", value: { limit: wholeNumber(options.limit ?? 0, "limit", UINT32_MAX) } },
      "conversations",
    );
    const conversations = res.conversations.map(toConversation);
    this.inbox.learn(conversations);
    return conversations;
  }

  /**
   * A page of a conversation's members, sorted by user id: after `options.after` (the last member of
   * the page before; from the first when absent), at most `options.limit` (the server's default
   * 1,000, at most 5,000). `hasMore`: ask again with `after` set to the last member. A server that
   * does not list the `member_pages` feature answers every member, with `hasMore` false; it is not
   * sent `after` or `limit` (in JSON it would refuse them).
   */
  async listMembers(
    conversationId: string,
    options: { after?: string; limit?: number } = {},
  ): Promise<MemberList> {
    const pages = this.welcome?.features.includes(MEMBER_PAGES_FEATURE) === true;
    const res = await this.request(
      {
        case: "listMembers",
        value: pages
          ? {
              conversationId,
              after: options.after ?? "",
              limit: wholeNumber(options.limit ?? 0, "limit", UINT32_MAX),
            }
          : { conversationId },
      },
      "members",
    );
    return {
      conversationId: res.conversationId,
      members: res.members,
      roles: res.roles.map(toMember),
      hasMore: res.hasMore,
    };
  }

  /**
   * Typing indicator. Ephemeral and fire-and-forget: dropped when not connected, no promise; an
   * error reply (e.g. NOT_MEMBER) is reported through the "error" event.
   */
  typing(conversationId: string, typing = true): void {
    const conn = this.connection.current;
    if (!conn?.welcome) return;
    this.requests
      .request(conn, { case: "typing", value: { conversationId, typing } }, "ok", this.requestTimeoutMs)
      .catch((err: unknown) => {
        // Only the server's verdicts are interesting; a lost typing indicator is not.
        if (err instanceof SwitchboardClientError && !isLocalReason(err.reason)) this.emitError(err);
      });
  }

  /** Moves my read watermark in a conversation up to `seq`. */
  async markRead(conversationId: string, seq: number): Promise<void> {
    await this.request(
      {
        case: "receipt",
        value: { conversationId, seq: BigInt(wholeNumber(seq, "seq")), kind: ReceiptKind.READ },
      },
      "ok",
    );
  }

  /** Moves my delivered watermark in a conversation up to `seq`. */
  async markDelivered(conversationId: string, seq: number): Promise<void> {
    await this.request(
      {
        case: "receipt",
        value: { conversationId, seq: BigInt(wholeNumber(seq, "seq")), kind: ReceiptKind.DELIVERED },
      },
      "ok",
    );
  }

  /**
   * Watches users' presence; resolves with their current status. The subscription is remembered and
   * renewed after every reconnect (the server's is per connection); the renewed snapshot is emitted
   * as "presence" events, so the app catches up on changes it missed while disconnected.
   */
  async subscribePresence(userIds: string[]): Promise<PresenceStatus[]> {
    const pending = new Set(userIds);
    this.presencePending.add(pending);
    try {
      const res = await this.request({ case: "subscribePresence", value: { userIds } }, "presenceSnapshot");
      // Those unsubscribed while it was on its way stay unwatched (the server handles the two in order).
      for (const id of pending) this.presenceWatch.add(id);
      return res.statuses.map(toPresence);
    } finally {
      this.presencePending.delete(pending);
    }
  }

  async unsubscribePresence(userIds: string[]): Promise<void> {
    for (const id of userIds) {
      this.presenceWatch.delete(id);
      for (const pending of this.presencePending) pending.delete(id);
    }
    await this.request({ case: "unsubscribePresence", value: { userIds } }, "ok");
  }

  /**
   * Registers this device's push token (or replaces its earlier one), so the user is notified while
   * no device of theirs is connected. `deviceId` is the app's stable id of this device. `token`:
   * APNs the device token in hex, FCM the registration token, Web Push
   * `JSON.stringify(pushSubscription)` (from `pushManager.subscribe`), webhook an http(s) URL; another
   * form is refused with INVALID_DEVICE_TOKEN.
   */
  async registerDevice(device: {
    deviceId: string;
    provider: PushProviderName;
    token: string;
  }): Promise<void> {
    await this.request(
      {
        case: "registerDevice",
        value: { deviceId: device.deviceId, provider: PUSH_PROVIDERS[device.provider], token: device.token },
      },
      "ok",
    );
  }

  /** Removes one of my devices' push tokens (e.g. at sign-out). */
  async unregisterDevice(deviceId: string): Promise<void> {
    await this.request({ case: "unregisterDevice", value: { deviceId } }, "ok");
  }

  /** Stops push notifications for a conversation until `untilMs` (Unix ms), or until unmuted (0). */
  async muteConversation(conversationId: string, untilMs = 0): Promise<void> {
    await this.request(
      {
        case: "muteConversation",
        value: { conversationId, untilMs: BigInt(wholeNumber(untilMs, "untilMs")) },
      },
      "ok",
    );
  }

  async unmuteConversation(conversationId: string): Promise<void> {
    await this.request({ case: "unmuteConversation", value: { conversationId } }, "ok");
  }

  /** Sets my daily do-not-disturb window (minutes after local midnight in an IANA zone), or clears it. */
  async setDoNotDisturb(window: DoNotDisturbWindow | null): Promise<void> {
    if (window) {
      wholeNumber(window.startMinute, "startMinute", UINT32_MAX);
      wholeNumber(window.endMinute, "endMinute", UINT32_MAX);
    }
    await this.request({ case: "setDoNotDisturb", value: window ? { window } : {} }, "ok");
  }

  /** My mutes in force and my do-not-disturb window. */
  async getNotificationSettings(): Promise<NotificationSettings> {
    const res = await this.request({ case: "getNotificationSettings", value: {} }, "notificationSettings");
    return {
      muted: res.muted.map((m) => ({ conversationId: m.conversationId, untilMs: Number(m.untilMs) })),
      doNotDisturb: res.doNotDisturb
        ? {
            startMinute: res.doNotDisturb.startMinute,
            endMinute: res.doNotDisturb.endMinute,
            timeZone: res.doNotDisturb.timeZone,
          }
        : null,
    };
  }

  // ---------------------------------------------------------------- inbound frames

  /** A frame that is not the connection's own (welcome, drain): events and replies. */
  private onFrame(conn: Conn, frame: ServerFrame): void {
    const kind = frame.kind;
    switch (kind.case) {
      case "message":
        if (frame.replyTo === 0) {
          this.inbox.live(conn, kind.value);
          return;
        }
        break;
      case "typing":
        this.emit("typing", toTyping(kind.value));
        return;
      case "presence":
        if (kind.value.status) this.emit("presence", toPresence(kind.value.status));
        return;
      case "receipt":
        this.emit("receipt", toReceipt(kind.value));
        return;
      case "conversation":
        if (frame.replyTo === 0) {
          if (kind.value.conversation) {
            const { id, version } = kind.value.conversation;
            if (this.conversationChanges.isStale(id, { version, changedAtMs: kind.value.changedAtMs }))
              return;
            const conversation = toConversation(kind.value.conversation);
            // A group that went to pull is followed by seq from now on (its messages leave the inbox).
            if (conversation.delivery === "pull") this.inbox.follow(conversation.id);
            this.emit("conversation", conversation);
          }
          return;
        }
        break;
      case undefined:
        return; // a kind this SDK does not know (newer server): ignore
      default:
        break;
    }
    if (this.requests.deliverReply(frame)) return;
    if (kind.case === "ack") {
      // The ack of an attempt we stopped waiting for (timed out and re-sent): matched by clientMsgId.
      this.sends.settleLate(kind.value);
      return;
    }
    if (kind.case === "error" && frame.replyTo === 0) this.emitError(fromWireError(kind.value));
    // Anything else is a late reply to a request that already timed out: nobody is waiting.
  }

  /** A connection was welcomed: queued sends go out, presence is renewed, the inbox catches up. */
  private onOpened(conn: Conn, welcome: WelcomeInfo): void {
    // Before anything is sent or synced on it: positions of another data set are dropped first.
    this.inbox.welcomed(welcome.dataSet);
    this.emit("connected", welcome);
    if (!this.connection.isCurrent(conn)) return; // a listener closed us
    this.sends.pump();
    this.renewPresence(conn);
    if (this.autoSync) void this.inbox.sync(conn);
    else this.connection.endOutage();
  }

  /**
   * Subscribes the watched users again on a new connection: at most PRESENCE_TARGETS_PER_REQUEST a
   * request, since the server refuses a longer list whole (INVALID_PRESENCE_TARGETS). A request the
   * server refuses with NOT_A_CONTACT (a user who shared only a group the user has since left) is
   * split in halves until the refused users are alone; they are no longer watched, and the others
   * are renewed as before.
   */
  private renewPresence(conn: Conn): void {
    if (this.presenceWatch.size === 0) return;
    void (async () => {
      const users = [...this.presenceWatch];
      for (let i = 0; i < users.length; i += PRESENCE_TARGETS_PER_REQUEST) {
        if (!(await this.renewPresenceOf(conn, users.slice(i, i + PRESENCE_TARGETS_PER_REQUEST)))) return;
      }
    })();
  }

  /**
   * Renews these users' watches; false when renewing should stop (connection gone, a limit hit).
   * Refused for now (RATE_LIMITED, or the server too slow: UNAVAILABLE, DEADLINE_EXCEEDED, no reply
   * in time), it asks again after a wait that grows with each refusal in a row, with jitter, up to
   * 30 s (presenceRenewalWaitMs), for as long as the connection lasts.
   */
  private async renewPresenceOf(conn: Conn, users: string[]): Promise<boolean> {
    for (let refusals = 0; ; ) {
      // Unsubscribed meanwhile: not asked for again.
      const userIds = users.filter((u) => this.presenceWatch.has(u));
      if (userIds.length === 0) return true;
      try {
        const snapshot = await this.requests.request(
          conn,
          { case: "subscribePresence", value: { userIds } },
          "presenceSnapshot",
          this.requestTimeoutMs,
        );
        for (const s of snapshot.statuses) this.emit("presence", toPresence(s));
        return true;
      } catch (err) {
        // Refused before it did anything (the server's presence limits), or the server slow: asked
        // again later, backing off.
        if (renewalRetryable(err) && this.connection.isCurrent(conn)) {
          try {
            await this.wait(presenceRenewalWaitMs(err.retryAfterMs, ++refusals, this.random));
          } catch {
            return false; // the client stopped
          }
          if (!this.connection.isCurrent(conn)) return false;
          continue;
        }
        if (err instanceof SwitchboardClientError && err.reason === "NOT_A_CONTACT") {
          if (userIds.length === 1) {
            this.presenceWatch.delete(userIds[0]!); // the server no longer lets us watch them
            return true;
          }
          const half = Math.ceil(userIds.length / 2);
          return (
            (await this.renewPresenceOf(conn, userIds.slice(0, half))) &&
            this.renewPresenceOf(conn, userIds.slice(half))
          );
        }
        if (err instanceof SwitchboardClientError && err.reason !== LocalReason.CONNECTION_LOST)
          this.emitError(err);
        return false;
      }
    }
  }

  // ---------------------------------------------------------------- outbound

  /**
   * A request that waits (up to its timeout) for a connection, then for its reply. One refused with
   * RATE_LIMITED (refused before it did anything) is asked again after `retryAfterMs`, while that
   * still fits in its timeout.
   */
  private async request<C extends ReplyCase>(
    kind: FrameKind,
    expect: C,
    timeoutMs = this.requestTimeoutMs,
  ): Promise<ReplyOf<C>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const conn = await this.connection.whenOpen(Math.max(1, deadline - Date.now()));
      try {
        return await this.requests.request(conn, kind, expect, Math.max(1, deadline - Date.now()));
      } catch (err) {
        const waitMs =
          err instanceof SwitchboardClientError && err.reason === "RATE_LIMITED" ? err.retryAfterMs : 0;
        if (waitMs <= 0 || Date.now() + waitMs >= deadline) throw err;
        await this.wait(waitMs);
      }
    }
  }

  /** Sleeps `ms`, unless the client stops first: then rejects with its reason (CLOSED after close()). */
  private wait(ms: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const w = {
        timer: setTimeout(() => {
          this.waits.delete(w);
          resolve();
        }, ms),
        reject,
      };
      this.waits.add(w);
    });
  }

  private conversationOf(c: Parameters<typeof toConversation>[0] | undefined): Conversation {
    if (!c) throw localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, "reply has no conversation");
    return toConversation(c);
  }

  private emitError(err: SwitchboardClientError): void {
    this.emit("error", err);
  }

  protected override listenerFailed(err: unknown, event: keyof SwitchboardClientEvents): void {
    if (event === "error" || this.listenerCount("error") === 0) {
      super.listenerFailed(err, event);
      return;
    }
    this.emit(
      "error",
      localError(Code.UNKNOWN, "LISTENER_FAILED", `a "${String(event)}" listener threw: ${String(err)}`, err),
    );
  }
}

const UINT32_MAX = 2 ** 32 - 1;

/**
 * `value` if it is a whole number from 0 to `max` (a safe integer by default); INVALID_NUMBER
 * otherwise, before anything is sent: the server takes a negative or fractional number for a
 * malformed frame (answered with replyTo 0, so the call would wait for its timeout), and closes the
 * connection after ten (3501).
 */
function wholeNumber(value: number, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (Number.isSafeInteger(value) && value >= 0 && value <= max) return value;
  throw localError(
    Code.INVALID_ARGUMENT,
    LocalReason.INVALID_NUMBER,
    `${name} must be a whole number from 0 to ${max}, not ${String(value)}`,
  );
}
