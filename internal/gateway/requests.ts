/**
 * The requests a connection answers from the request and its caller alone: groups and their members,
 * the conversation list, receipts, devices and notification settings. None of them touches the
 * connection's own state (the order of its sends and syncs, its presence watches, its typing
 * throttle), so they live apart from it (connection.ts checks the caller's rates first, then asks
 * `answerRequest`). Each handler returns the reply; what it throws is the request's error.
 */
import type { ClientFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { ReceiptKind } from "../../gen/switchboard/common/v1/common_pb.js";
import type { ConversationRecord } from "../backends/types.js";
import {
  groupChangeFromWire,
  policiesFromWire,
  requireConversationId,
  roleFromWire,
  rosterPageLimit,
  toWireConversation,
  toWireMember,
} from "../conversations/index.js";
import { isValidUserId } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import { errors } from "../lib/errors.js";
import { mapLimited } from "../lib/map-limited.js";
import { canonicalTimeZone, doNotDisturbProblem } from "../push/do-not-disturb.js";
import type { ServerFrameInit } from "./codec.js";
import type { EventRelays, GatewayServices } from "./services.js";

/** Conversations a user may mute, muted at once. */
export const MUTES_PER_USER_MAX = 1_000;
/** A mute may last 3,650 days at most (past it is "for good" in all but name, and past a storage TTL). */
const MUTE_FOR_MS_MAX = 10 * 365 * 24 * 3600 * 1000;

/**
 * Storage reads one request makes at once (a group's receipts read two per member): a client's one
 * request should not take the process's storage requests from everyone else's messages.
 */
const READS_PER_REQUEST_MAX = 16;

type Request = NonNullable<ClientFrame["kind"]>;
type Case = NonNullable<Request["case"]>;
type Reply = NonNullable<ServerFrameInit["kind"]>;
type ValueOf<K extends Case> = Extract<Request, { case: K }>["value"];
type Services = Pick<GatewayServices, "config" | "backends" | "conversations" | "relays" | "push"> &
  EventRelays;
/** Who asks: the connection's user, and its session (kept out of the relays it causes). */
export interface Caller {
  userId: string;
  sessionId: string;
}
type Handler<K extends Case> = (s: Services, caller: Caller, value: ValueOf<K>) => Promise<Reply>;

/** A page size as asked for (0: the default of 100), within sync.pageSizeMax. */
export function pageLimit(config: Config, requested: number): number {
  const max = config.sync.pageSizeMax;
  return requested > 0 ? Math.min(requested, max) : Math.min(100, max);
}

const OK: Reply = { case: "ok", value: {} };
const conversation = (record: ConversationRecord): Reply => ({
  case: "conversation",
  value: { conversation: toWireConversation(record) },
});

const handlers: { [K in Case]?: Handler<K> } = {
  createGroup: async (s, { userId }, v) =>
    conversation(await s.conversations.createGroup(userId, v.name, v.members, v.open, policiesFromWire(v))),

  updateGroup: async (s, { userId }, v) =>
    conversation(await s.conversations.updateGroup(userId, v.conversationId, groupChangeFromWire(v))),

  setMemberRole: async (s, { userId }, v) =>
    conversation(await s.conversations.setRole(userId, v.conversationId, v.userId, roleFromWire(v.role))),

  addMembers: async (s, { userId }, v) =>
    conversation(await s.conversations.addMembers(userId, v.conversationId, v.members)),

  removeMembers: async (s, { userId }, v) =>
    conversation(await s.conversations.removeMembers(userId, v.conversationId, v.members)),

  joinGroup: async (s, { userId }, v) => conversation(await s.conversations.join(userId, v.conversationId)),

  leaveGroup: async (s, { userId }, v) => {
    await s.conversations.leave(userId, v.conversationId);
    return OK;
  },

  listConversations: async (s, { userId }, v) => {
    const { membership, messages, receipts } = s.backends;
    const records = await membership.conversationsOf(userId, pageLimit(s.config, v.limit));
    const conversations = await mapLimited(records, READS_PER_REQUEST_MAX, async (r) =>
      toWireConversation(r, await messages.lastSeq(r.id), await receipts.get(r.id, userId, "read")),
    );
    return { case: "conversations", value: { conversations } };
  },

  listMembers: async (s, { userId }, v) => {
    const conversationId = requireConversationId(v.conversationId); // its form first (§2.1)
    if (v.after !== "" && !isValidUserId(v.after))
      throw errors.invalid("INVALID_USER_ID", "listMembers: after is not a user id");
    const limit = rosterPageLimit(v.limit);
    const page = await s.conversations.roster(
      userId,
      conversationId,
      v.after === "" ? { limit } : { after: v.after, limit },
    );
    return {
      case: "members",
      value: {
        conversationId,
        members: page.members.map((m) => m.userId),
        roles: page.members.map(toWireMember),
        hasMore: page.more,
      },
    };
  },

  listReceipts: async (s, { userId }, { conversationId }) => {
    // A pull conversation's members are too many to list: the caller gets its own watermarks.
    const { record } = await s.conversations.memberAccess(userId, conversationId);
    const { membership, receipts } = s.backends;
    const members = record.delivery === "pull" ? [userId] : (await membership.members(conversationId)).sort();
    const watermarks = await mapLimited(members, READS_PER_REQUEST_MAX, async (member) => ({
      userId: member,
      deliveredSeq: BigInt(await receipts.get(conversationId, member, "delivered")),
      readSeq: BigInt(await receipts.get(conversationId, member, "read")),
    }));
    return { case: "receipts", value: { conversationId, receipts: watermarks } };
  },

  receipt: async (s, { userId, sessionId }, { conversationId, seq, kind }) => {
    if (kind !== ReceiptKind.DELIVERED && kind !== ReceiptKind.READ)
      throw errors.invalid("INVALID_RECEIPT_KIND", "kind must be DELIVERED or READ");
    const { record } = await s.conversations.memberAccess(userId, conversationId);
    const last = await s.backends.messages.lastSeq(conversationId);
    if (seq < 1n || Number(seq) > last)
      throw errors.invalid("SEQ_OUT_OF_RANGE", `seq must be in [1, ${last}]`);
    const kindName = kind === ReceiptKind.READ ? "read" : "delivered";
    if (await s.backends.receipts.raise(conversationId, userId, kindName, Number(seq))) {
      // Stored: the reply is ok, whether or not the event gets out at once (a retry of this request
      // would not relay it again: the watermark no longer moves).
      s.relayEventually("receipt", `${conversationId}\u0000${userId}\u0000${kindName}`, async () => {
        // In a pull conversation only the user's own devices hear of it (their read state).
        const userIds =
          record.delivery === "pull" ? [userId] : await s.backends.membership.members(conversationId);
        await s.relays(conversationId).relay({
          userIds,
          excludeSessionId: sessionId,
          frame: { kind: { case: "receipt", value: { conversationId, userId, seq, kind } } },
        });
      });
    }
    return OK;
  },

  registerDevice: async (s, { userId }, { deviceId, provider, token }) => {
    await s.push.registerDevice({
      device: { userId, deviceId, provider, token, registeredAtMs: BigInt(Date.now()) },
    });
    return OK;
  },

  unregisterDevice: async (s, { userId }, { deviceId }) => {
    await s.push.unregisterDevice({ userId, deviceId });
    return OK;
  },

  muteConversation: async (s, { userId }, { conversationId, untilMs }) => {
    await s.conversations.memberAccess(userId, conversationId);
    const until = Number(untilMs);
    const now = Date.now();
    if (until < 0 || (until > 0 && (until <= now || until > now + MUTE_FOR_MS_MAX)))
      throw errors.invalid(
        "INVALID_MUTE",
        "until_ms must be 0 (until unmuted) or a time in the next 3,650 days",
      );
    const muted = await s.backends.settings.muted(userId, now);
    if (muted.length >= MUTES_PER_USER_MAX && !muted.some((m) => m.conversationId === conversationId))
      throw errors.exhausted("TOO_MANY_MUTES", `at most ${MUTES_PER_USER_MAX} muted conversations`);
    await s.backends.settings.mute(userId, { conversationId, untilMs: until });
    return OK;
  },

  unmuteConversation: async (s, { userId }, { conversationId }) => {
    await s.backends.settings.unmute(userId, requireConversationId(conversationId));
    return OK;
  },

  setDoNotDisturb: async (s, { userId }, { window }) => {
    const dnd = window && {
      startMinute: window.startMinute,
      endMinute: window.endMinute,
      timeZone: window.timeZone,
    };
    const problem = dnd && doNotDisturbProblem(dnd);
    if (problem) throw errors.invalid("INVALID_DO_NOT_DISTURB", problem);
    await s.backends.settings.setDoNotDisturb(
      userId,
      dnd && { ...dnd, timeZone: canonicalTimeZone(dnd.timeZone) },
    );
    return OK;
  },

  getNotificationSettings: async (s, { userId }) => {
    const [muted, dnd] = await Promise.all([
      s.backends.settings.muted(userId, Date.now()),
      s.backends.settings.doNotDisturb(userId),
    ]);
    return {
      case: "notificationSettings",
      value: {
        muted: muted
          .sort((a, b) => (a.conversationId < b.conversationId ? -1 : 1))
          .map((m) => ({ conversationId: m.conversationId, untilMs: BigInt(m.untilMs) })),
        ...(dnd ? { doNotDisturb: dnd } : {}),
      },
    };
  },
};

/** The reply to `req` when it is one of the requests above; undefined for any other. */
export function answerRequest(s: Services, caller: Caller, req: Request): Promise<Reply> | undefined {
  // The map is keyed by case, so handlers[req.case] takes req.value; TypeScript cannot follow that
  // correlation through the union, hence the cast.
  if (req.case === undefined) return undefined;
  const handler = handlers[req.case] as Handler<Case> | undefined;
  return handler?.(s, caller, req.value as never);
}
