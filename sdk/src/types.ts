/**
 * The SDK's public data types. They are plain objects with `number` for seqs, cursors and
 * timestamps (the wire's uint64/int64 are bigint in protobuf-es; converting once here keeps apps
 * free of bigint). Seqs and cursors are counters and timestamps are milliseconds, so they stay far
 * below 2^53; message ids are Snowflakes and therefore stay decimal strings.
 */
import type {
  HistoryResult as PbHistoryResult,
  Limits as PbLimits,
  MemberReceipts as PbMemberReceipts,
  MessageEvent as PbMessageEvent,
  ReceiptEvent as PbReceiptEvent,
  SendAck as PbSendAck,
  TypingEvent as PbTypingEvent,
  Welcome as PbWelcome,
} from "../../gen/switchboard/client/v1/client_pb.js";
import {
  ConversationKind,
  DeliveryModel,
  GroupPolicy,
  MemberRole,
  type Conversation as PbConversation,
  type Member as PbMember,
  type Message as PbMessage,
  type PresenceStatus as PbPresenceStatus,
  ReceiptKind,
} from "../../gen/switchboard/common/v1/common_pb.js";

/** A chat message, immutable once acknowledged. */
export interface ChatMessage {
  conversationId: string;
  /** Position in the conversation (gap-free, from 1). */
  seq: number;
  /** Globally unique Snowflake id, decimal string. */
  messageId: string;
  /** Sender user id ("system" for backend messages). */
  sender: string;
  /** The sender's idempotency key. */
  clientMsgId: string;
  body: string;
  /** Server acceptance time, Unix ms. */
  createdAtMs: number;
}

/** Payload of the "message" event. */
export interface IncomingMessage {
  message: ChatMessage;
  /**
   * The inbox position to persist once this message is handled (`client.cursor` after it): the
   * message's own for a push-model conversation; for a pull-model one (`delivery` "pull": its messages
   * have no inbox position, and the wire says cursor 0) the client's cursor, unchanged. Saving it is
   * never a step back; but only the checkpoint (the "checkpoint" event, `client.checkpoint`) also holds
   * the pull conversations' positions.
   */
  cursor: number;
  /** "sync" while catching up after (re)connect (or fetched by seq), "live" afterwards. */
  source: "sync" | "live";
  /** "pull": a large group's message, followed by seq, not by the inbox (docs/protocol.md §3.1). */
  delivery: "push" | "pull";
}

/**
 * Where this device left off, all of it: persist it (it is plain JSON) once the messages before it
 * are handled, and pass it back as the `checkpoint` option on the next start, so nothing is missed
 * or shown twice across restarts. The "checkpoint" event hands it over after the message listeners
 * have run; `client.checkpoint` reads it at any time.
 */
export interface Checkpoint {
  /** The inbox position processed (`client.cursor`). */
  cursor: number;
  /**
   * The newest seq processed per conversation (`client.pullPositions`): of the pull conversations,
   * and of others the device saw messages of (direct ones included), so that a group switching to pull
   * while the device is away loses and repeats nothing. Opaque: persist it whole.
   */
  pullPositions: Record<string, number>;
  /**
   * The server's data set these positions belong to (`welcome.dataSet`); absent from an older
   * checkpoint or server. Another one at a connect means the server's data was replaced (a restored
   * backup): the client then starts over from 0 (the "dataSetChanged" event).
   */
  dataSet?: string;
}

export interface SendAck {
  conversationId: string;
  messageId: string;
  seq: number;
  clientMsgId: string;
  createdAtMs: number;
  /** True when the server had already stored this clientMsgId (e.g. a resend after a lost ack). */
  duplicate: boolean;
  /** The trace the server recorded this send in (32 hex digits), or "" (tracing off, not sampled). */
  traceId: string;
}

export interface Limits {
  bodyCharsMax: number;
  frameBytesMax: number;
  sendsPerSecond: number;
  groupMembersMax: number;
}

/** Payload of the "connected" event (the server's welcome). */
export interface WelcomeInfo {
  userId: string;
  sessionId: string;
  heartbeatIntervalMs: number;
  limits: Limits;
  serverTimeMs: number;
  /** The newest inbox position; the client syncs when its cursor is below it. */
  headCursor: number;
  /** Optional protocol features the server understands (e.g. "first_attempt"). */
  features: readonly string[];
  /** Names the data the server holds ("" from a server that does not): see Checkpoint.dataSet. */
  dataSet: string;
}

export type ConversationKindName = "direct" | "group" | "unspecified";

/** Who may post or add members in a group: any member, or only admins and the owner. */
export type GroupPolicyName = "everyone" | "admins";

/** A daily window of local time without push notifications (docs/protocol.md, "Notification settings"). */
export interface DoNotDisturbWindow {
  /** Minutes after local midnight, 0-1439; the window starts here. */
  startMinute: number;
  /** Minutes after local midnight, 0-1439, exclusive; before the start: the window runs past midnight. */
  endMinute: number;
  /** IANA time zone, e.g. Intl.DateTimeFormat().resolvedOptions().timeZone. */
  timeZone: string;
}

export interface NotificationSettings {
  /** Mutes in force; `untilMs` 0: until unmuted. */
  muted: Array<{ conversationId: string; untilMs: number }>;
  doNotDisturb: DoNotDisturbWindow | null;
}

/** A member's standing in a group (docs/protocol.md, "Roles"). */
export type MemberRoleName = "owner" | "admin" | "member";

export interface Conversation {
  id: string;
  kind: ConversationKindName;
  /** Group name; empty for direct conversations. */
  name: string;
  /** The group's owner; empty for direct conversations and for a group without one. */
  owner: string;
  memberCount: number;
  open: boolean;
  lastSeq: number;
  createdAtMs: number;
  /** The signed-in user's read watermark (listConversations only; 0 elsewhere): unread = lastSeq - readSeq, minus own messages. */
  readSeq: number;
  /** Who may post ("everyone" in direct conversations). */
  postPolicy: GroupPolicyName;
  /** Who may add members. */
  addPolicy: GroupPolicyName;
  /**
   * "push": every message is in the inbox (sync); "pull": a large group whose messages come live
   * with cursor 0 and are otherwise fetched by seq (docs/protocol.md, "Delivery models").
   */
  delivery: "push" | "pull";
  /**
   * Changes stored so far (1 at creation, one more per change of the conversation, its members or
   * their roles): of two states of one conversation, the larger version is the newer. 0 from a
   * server that keeps none.
   */
  version: number;
}

export interface HistoryPage {
  conversationId: string;
  /** Oldest first. */
  messages: ChatMessage[];
  /** Older (or, with afterSeq, newer) messages remain. */
  hasMore: boolean;
}

export interface MemberList {
  conversationId: string;
  /** Sorted user ids. */
  members: string[];
  /** The same members with their roles, in the same order. */
  roles: Array<{ userId: string; role: MemberRoleName }>;
  /** More members sort after the last one: listMembers again with `after` set to it. */
  hasMore: boolean;
}

export interface PresenceStatus {
  userId: string;
  online: boolean;
  /** Last heartbeat or activity, Unix ms (0 if never seen). */
  lastActiveAtMs: number;
}

export interface TypingInfo {
  conversationId: string;
  userId: string;
  typing: boolean;
}

export type ReceiptKindName = "delivered" | "read" | "unspecified";

export interface ReceiptInfo {
  conversationId: string;
  userId: string;
  seq: number;
  kind: ReceiptKindName;
}

/** One member's watermarks in a conversation (listReceipts); 0 means nothing marked yet. */
export interface MemberReceipts {
  userId: string;
  deliveredSeq: number;
  readSeq: number;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
  /** False when the close is terminal (or close() was called): the client stays down. */
  willReconnect: boolean;
  /** When reconnecting: the delay before the next attempt, ms. */
  reconnectInMs?: number;
}

export interface SyncedInfo {
  /** The cursor after the sync. */
  cursor: number;
  /** Messages emitted by this sync (after dedupe). */
  delivered: number;
}

// ---- converters (wire → public) ----

const num = (v: bigint | number): number => Number(v);

export function toChatMessage(m: PbMessage): ChatMessage {
  return {
    conversationId: m.conversationId,
    seq: num(m.seq),
    messageId: m.messageId,
    sender: m.sender,
    clientMsgId: m.clientMsgId,
    body: m.body,
    createdAtMs: num(m.createdAtMs),
  };
}

export function toSendAck(a: PbSendAck): SendAck {
  return {
    conversationId: a.conversationId,
    messageId: a.messageId,
    seq: num(a.seq),
    clientMsgId: a.clientMsgId,
    createdAtMs: num(a.createdAtMs),
    duplicate: a.duplicate,
    traceId: a.traceId,
  };
}

function toLimits(l: PbLimits | undefined): Limits {
  return {
    bodyCharsMax: l?.bodyCharsMax ?? 0,
    frameBytesMax: l?.frameBytesMax ?? 0,
    sendsPerSecond: l?.sendsPerSecond ?? 0,
    groupMembersMax: l?.groupMembersMax ?? 0,
  };
}

export function toWelcome(w: PbWelcome): WelcomeInfo {
  return {
    userId: w.userId,
    sessionId: w.sessionId,
    heartbeatIntervalMs: w.heartbeatIntervalMs,
    limits: toLimits(w.limits),
    serverTimeMs: num(w.serverTimeMs),
    headCursor: num(w.headCursor),
    features: [...w.features],
    dataSet: w.dataSet,
  };
}

export function toConversation(c: PbConversation): Conversation {
  return {
    id: c.id,
    kind:
      c.kind === ConversationKind.DIRECT
        ? "direct"
        : c.kind === ConversationKind.GROUP
          ? "group"
          : "unspecified",
    name: c.name,
    owner: c.owner,
    memberCount: c.memberCount,
    open: c.open,
    lastSeq: num(c.lastSeq),
    createdAtMs: num(c.createdAtMs),
    readSeq: num(c.readSeq),
    postPolicy: c.postPolicy === GroupPolicy.ADMINS ? "admins" : "everyone",
    addPolicy: c.addPolicy === GroupPolicy.ADMINS ? "admins" : "everyone",
    delivery: c.delivery === DeliveryModel.PULL ? "pull" : "push",
    version: num(c.version),
  };
}

const ROLE_NAMES: Record<MemberRoleName, MemberRole> = {
  owner: MemberRole.OWNER,
  admin: MemberRole.ADMIN,
  member: MemberRole.MEMBER,
};

export function toMember(m: PbMember): { userId: string; role: MemberRoleName } {
  const role = m.role === MemberRole.OWNER ? "owner" : m.role === MemberRole.ADMIN ? "admin" : "member";
  return { userId: m.userId, role };
}

export const roleToWire = (role: MemberRoleName): MemberRole => ROLE_NAMES[role];

export const policyToWire = (p: GroupPolicyName | undefined): GroupPolicy =>
  p === undefined ? GroupPolicy.UNSPECIFIED : p === "admins" ? GroupPolicy.ADMINS : GroupPolicy.EVERYONE;

export function toHistoryPage(h: PbHistoryResult): HistoryPage {
  return { conversationId: h.conversationId, messages: h.messages.map(toChatMessage), hasMore: h.hasMore };
}

export function toPresence(p: PbPresenceStatus): PresenceStatus {
  return { userId: p.userId, online: p.online, lastActiveAtMs: num(p.lastActiveAtMs) };
}

export function toTyping(t: PbTypingEvent): TypingInfo {
  return { conversationId: t.conversationId, userId: t.userId, typing: t.typing };
}

export function receiptKindName(k: ReceiptKind): ReceiptKindName {
  return k === ReceiptKind.DELIVERED ? "delivered" : k === ReceiptKind.READ ? "read" : "unspecified";
}

export function toReceipt(r: PbReceiptEvent): ReceiptInfo {
  return {
    conversationId: r.conversationId,
    userId: r.userId,
    seq: num(r.seq),
    kind: receiptKindName(r.kind),
  };
}

export function toMemberReceipts(r: PbMemberReceipts): MemberReceipts {
  return { userId: r.userId, deliveredSeq: num(r.deliveredSeq), readSeq: num(r.readSeq) };
}

export function messageEventCursor(e: PbMessageEvent): number {
  return num(e.cursor);
}
