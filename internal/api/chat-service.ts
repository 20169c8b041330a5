/**
 * The server API (switchboard.api.v1.ChatService, docs/server-api.md): what backend services call.
 * The guard has checked the method against the caller's permissions before a handler runs; each
 * handler checks what the request itself asks for (sender, conversation) with `Access`, then does
 * the work through the same rules clients' requests go through (Conversations), so a bot's message is
 * validated, deduplicated, stored and delivered exactly like a user's.
 */
import type { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { historyWithinBytes } from "../backends/message-pages.js";
import {
  type ConversationRecord,
  type MembershipStore,
  type MessageLog,
  type MessageStore,
  parseDeadLetterId,
} from "../backends/types.js";
import {
  type Conversations,
  directMembers,
  groupChangeFromWire,
  keyedGroupId,
  policiesFromWire,
  requireConversationId,
  requireGroupId,
  roleFromWire,
  rosterPageLimit,
  toWireConversation,
  toWireMember,
  toWireMessage,
} from "../conversations/index.js";
import type { Policy } from "../grpc-auth/policy.js";
import { isValidUserId, requireUserId } from "../lib/auth.js";
import { Code, errors, forClients, SwitchboardError } from "../lib/errors.js";
import { Limiter } from "../lib/limiter.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceClient, ServiceImpl } from "../lib/rpc.js";
import type { Router } from "../router/index.js";
import { type Access, accessOf } from "./access.js";
import { StreamStops, streamEvents } from "./events.js";
import { RecentRequests, requireIdempotencyKey } from "./recent-requests.js";

/** Recipients of one Broadcast, and users of one GetPresence. */
export const USERS_PER_CALL_MAX = 1_000;
/** The process's Broadcasts send this many direct messages at a time, together. */
const BROADCAST_SENDS_IN_FLIGHT_MAX = 16;
/**
 * Body characters (UTF-16 code units) one Broadcast has in flight at most, though always one send: a
 * thousand sends of a 100,000-character body 16 at a time held other users' messages for tens of
 * milliseconds.
 */
const BROADCAST_CHARS_IN_FLIGHT_MAX = 1024 * 1024;
/** A WebSocket close reason holds at most 123 bytes; keep a margin. */
export const CLOSE_REASON_BYTES_MAX = 120;
/** WebSocket close codes of a Disconnect (docs/protocol.md §7). */
const CLOSE_DISCONNECTED = 3014;
const CLOSE_KICKED = 3503;

export interface ChatServiceDeps {
  conversations: Conversations;
  membership: MembershipStore;
  messages: MessageStore;
  log: MessageLog;
  /** Sessions and the Deliver streams that carry a Disconnect to the gateways. */
  router: Pick<Router, "lookup" | "disconnect">;
  presence: ServiceClient<typeof PresenceService>;
  push: ServiceClient<typeof PushService>;
  /** The clients' grants (the same policy the guard admits methods by). */
  policy: () => Policy;
  pageSizeMax: number;
  /** Most message-body bytes per history page (sync.pageBytesMax; at least one message). */
  pageBytesMax: number;
  /** The longest body (gateway.bodyCharsMax), for how many messages a page reads at once. */
  bodyCharsMax: number;
  /** Where the API's sends are counted with the WebSocket's (messages appended, send→ack time). */
  metrics?: Pick<Metrics, "messagesTotal" | "appendSeconds">;
  /** Aborted when the process begins to stop: its event streams end then (StreamStops). */
  stopping?: AbortSignal;
}

export function chatServiceImpl(deps: ChatServiceDeps): ServiceImpl<typeof ChatService> {
  const { conversations, membership, messages } = deps;
  const stops = new StreamStops(deps.stopping);
  /** Shared by every Broadcast: calls side by side take turns rather than multiply the load. */
  const broadcastSends = new Limiter(BROADCAST_SENDS_IN_FLIGHT_MAX);
  /** CreateGroup's idempotency keys: what the store answered the attempt that made each group. */
  const groupsCreated = new RecentRequests<{ record: ConversationRecord; created: boolean }>();
  const access = (principal: string | undefined): Access => accessOf(principal, deps.policy(), membership);
  const conversationOf = async (a: Access, id: string): Promise<string> => {
    requireConversationId(id);
    await a.conversation(id);
    return id;
  };
  /** As conversationOf, for the methods that change groups only: any other id is NOT_A_GROUP. */
  const groupOf = (a: Access, id: string): Promise<string> => conversationOf(a, requireGroupId(id));
  const usersOf = (ids: string[]): string[] => {
    if (ids.length === 0 || ids.length > USERS_PER_CALL_MAX)
      throw errors.invalid("INVALID_USER_IDS", `user_ids must hold 1-${USERS_PER_CALL_MAX} user ids`);
    // Named by its place and value: in a list of a thousand, "user_ids is not valid" finds nothing.
    for (const [i, id] of ids.entries())
      requireUserId(id, `user_ids[${i}] ${JSON.stringify(id.slice(0, 140))}`);
    return ids;
  };

  /** conversations.send, counted like a WebSocket send. */
  const send: typeof conversations.send = async (input) => {
    const started = performance.now();
    const appended = await conversations.send(input);
    if (!appended.duplicate && deps.metrics) {
      deps.metrics.messagesTotal.inc();
      deps.metrics.appendSeconds.observe((performance.now() - started) / 1000);
    }
    return appended;
  };

  return {
    async publish(req, ctx) {
      const a = access(ctx.principal);
      // A sender the client may not use stays refused, whatever it stored: the answer to a retry
      // is only ever what this same sender stored under the key.
      const sender = a.sender(req.sender);
      const input = {
        sender,
        conversationId: requireConversationId(req.conversationId),
        clientMsgId: requireIdempotencyKey(req.idempotencyKey),
        body: req.body,
      };
      try {
        await a.conversation(input.conversationId);
      } catch (err) {
        // The grant no longer covers the conversation (a `member` grant whose sender was removed):
        // a retry of a Publish stored before still gets the original, as Conversations answers a
        // retry refused NOT_MEMBER (docs/protocol.md §3, "Idempotency").
        // Only with the same body: clients that share a sender but not a grant must not read, by
        // key, what another stored in a conversation outside their own grant.
        const original =
          err instanceof SwitchboardError && err.reason === "CONVERSATION_NOT_ALLOWED"
            ? await conversations.storedOnceSequenced(input)
            : undefined;
        if (!original || original.body !== input.body) throw err;
        return { message: toWireMessage(original), duplicate: true };
      }
      // Publish posts where its sender already is: a direct conversation it would start is
      // SendToUser's, under its own permission (sendToUsers), not one every publisher has.
      if (directMembers(input.conversationId) && !(await membership.getConversation(input.conversationId)))
        throw errors.denied(
          "NOT_MEMBER",
          `${sender} is not a member of ${input.conversationId} (or it does not exist): SendToUser starts a direct conversation`,
        );
      const { message, duplicate } = await send(input);
      return { message: toWireMessage(message), duplicate };
    },

    async sendToUser(req, ctx) {
      const sender = access(ctx.principal).sender(req.sender);
      const { message, duplicate } = await send({
        sender,
        toUser: requireUserId(req.userId),
        clientMsgId: requireIdempotencyKey(req.idempotencyKey),
        body: req.body,
      });
      return { message: toWireMessage(message), duplicate };
    },

    async broadcast(req, ctx) {
      const sender = access(ctx.principal).sender(req.sender);
      requireIdempotencyKey(req.idempotencyKey);
      const users = usersOf(req.userIds);
      if (new Set(users).size !== users.length)
        throw errors.invalid("DUPLICATE_USER_IDS", "user_ids must not repeat a user");
      const results = new Array(users.length);
      let next = 0;
      // Set when one worker failed the call: the others stop sending too (nobody reads their results).
      let failed = false;
      const worker = async () => {
        while (next < users.length && !failed && !ctx.signal.aborted) {
          const i = next++;
          const userId = users[i]!;
          try {
            // Its turn may come after the call failed or its caller gave up: then nothing is sent.
            const sent = await broadcastSends.run(async () =>
              failed || ctx.signal.aborted
                ? undefined
                : send({ sender, toUser: userId, clientMsgId: req.idempotencyKey, body: req.body }),
            );
            if (!sent) break;
            const { message, duplicate } = sent;
            // Without the body: it is the request's, and 1,000 copies of a long one would make the
            // answer larger than a gRPC client takes (4 MiB by default).
            results[i] = { userId, message: { ...toWireMessage(message), body: "" }, duplicate };
          } catch (err) {
            const e = SwitchboardError.from(err);
            // A request-wide mistake (bad key or body, a sender that cannot send direct messages)
            // fails the call rather than every recipient. Anything else, a storage error included,
            // is that recipient's: the messages sent to the others are answered.
            if (e.code === Code.INVALID_ARGUMENT && e.reason !== "INVALID_USER_ID") {
              failed = true;
              throw e;
            }
            // The caller was admitted: a peer refusing this process's own credential on its way
            // (the id service, say) is the deployment's fault, told as UNAVAILABLE (forClients).
            const told = forClients(e);
            results[i] = { userId, code: told.code, reason: told.reason };
          }
        }
      };
      const workers = Math.max(
        1,
        Math.min(
          BROADCAST_SENDS_IN_FLIGHT_MAX,
          users.length,
          Math.floor(BROADCAST_CHARS_IN_FLIGHT_MAX / Math.max(1, req.body.length)),
        ),
      );
      await Promise.all(Array.from({ length: workers }, worker));
      if (ctx.signal.aborted) throw ctx.signal.reason;
      return { results };
    },

    async createGroup(req, ctx) {
      requireUserId(req.owner, "owner");
      const policies = policiesFromWire(req);
      const caller = ctx.principal ?? "anonymous";
      // The key's form first, as Publish's: a malformed key is that, whatever the grant says of the
      // group it would name.
      const keyed =
        req.idempotencyKey === ""
          ? undefined
          : keyedGroupId(caller, requireIdempotencyKey(req.idempotencyKey));
      access(ctx.principal).creates(keyed, req.owner, req.members);
      if (keyed === undefined) {
        const group = await conversations.createGroup(req.owner, req.name, req.members, req.open, policies);
        return { conversation: toWireConversation(group), duplicate: false };
      }
      // The key names the group (keyedGroupId): a retry that reaches another process, or this one
      // after a restart, finds the first attempt's group in the store. This process also remembers
      // what each key asked for, to refuse a key reused for another request; a refused or failed
      // attempt is not remembered, so that the request corrected can be sent with the same key.
      // Stores if absent and announces: a retry is what tells the members when the first attempt
      // was cut off after storing the group (docs/server-api.md, CreateGroup).
      const store = () =>
        conversations.createGroupWithId(keyed, req.owner, req.name, req.members, req.open, policies);
      const first = await groupsCreated.run(
        caller,
        req.idempotencyKey,
        JSON.stringify([req.owner, req.name, req.members, req.open, req.postPolicy, req.addPolicy]),
        store,
        // Found in the store: made by an attempt before a restart, or on another process, whose
        // request this process does not know (docs/server-api.md: another request gets the group).
        (found) => found.created,
      );
      // A retry this process remembers is stored again too (finding the group), and so answered and
      // announced like one reaching another process.
      const stored = first.duplicate ? await store() : first.value;
      // A new group has no messages yet; a retry answers with the group as it is now.
      if (stored.created) return { conversation: toWireConversation(stored.record), duplicate: false };
      return {
        conversation: toWireConversation(stored.record, await messages.lastSeq(keyed)),
        duplicate: true,
      };
    },

    async updateGroup(req, ctx) {
      const id = await groupOf(access(ctx.principal), req.conversationId);
      const group = await conversations.updateGroup(undefined, id, groupChangeFromWire(req));
      return { conversation: toWireConversation(group, await messages.lastSeq(id)) };
    },

    async getConversation(req, ctx) {
      const id = await conversationOf(access(ctx.principal), req.conversationId);
      const record = await membership.getConversation(id);
      if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `no conversation ${id}`);
      return { conversation: toWireConversation(record, await messages.lastSeq(id)) };
    },

    async addMembers(req, ctx) {
      const id = await groupOf(access(ctx.principal), req.conversationId);
      const group = await conversations.addMembers(undefined, id, usersOf(req.userIds));
      return { conversation: toWireConversation(group, await messages.lastSeq(id)) };
    },

    async removeMembers(req, ctx) {
      const id = await groupOf(access(ctx.principal), req.conversationId);
      // Users who are not members are skipped, so a retried call is harmless.
      const group = await conversations.removeMembers(undefined, id, usersOf(req.userIds));
      return { conversation: toWireConversation(group, await messages.lastSeq(id)) };
    },

    async listMembers(req, ctx) {
      const id = await conversationOf(access(ctx.principal), req.conversationId);
      const limit = rosterPageLimit(req.pageSize);
      const after = req.pageToken === "" ? undefined : afterOfToken(req.pageToken);
      // Sorted by user id: a page starts after the last user id of the one before, however the
      // members changed in between.
      const page = await conversations.roster(
        undefined,
        id,
        after === undefined ? { limit } : { after, limit },
      );
      return {
        userIds: page.members.map((m) => m.userId),
        members: page.members.map(toWireMember),
        nextPageToken: page.more ? tokenAfter(page.members.at(-1)!.userId) : "",
      };
    },

    async setMemberRole(req, ctx) {
      const id = await groupOf(access(ctx.principal), req.conversationId);
      const group = await conversations.setRole(undefined, id, req.userId, roleFromWire(req.role));
      return { conversation: toWireConversation(group, await messages.lastSeq(id)) };
    },

    async getHistory(req, ctx) {
      const id = await conversationOf(access(ctx.principal), req.conversationId);
      const page = await historyWithinBytes(
        messages,
        id,
        {
          beforeSeq: Number(req.beforeSeq),
          afterSeq: Number(req.afterSeq),
          limit: Math.min(req.limit || 50, deps.pageSizeMax),
        },
        { bytesMax: deps.pageBytesMax, bodyCharsMax: deps.bodyCharsMax },
      );
      return { messages: page.messages.map(toWireMessage), hasMore: page.hasMore };
    },

    async getPresence(req, ctx) {
      const { statuses } = await deps.presence.getPresence(
        { userIds: usersOf(req.userIds) },
        { deadline: ctx.deadline },
      );
      return { statuses };
    },

    async listSessions(req) {
      const sessions = deps.router.lookup(requireUserId(req.userId));
      return { sessions: sessions.map((s) => ({ sessionId: s.sessionId, gatewayId: s.gatewayId })) };
    },

    async disconnect(req) {
      const userId = requireUserId(req.userId);
      if (Buffer.byteLength(req.reason) > CLOSE_REASON_BYTES_MAX)
        throw errors.invalid(
          "REASON_TOO_LONG",
          `reason must be at most ${CLOSE_REASON_BYTES_MAX} bytes of UTF-8`,
        );
      const code = req.allowReconnect ? CLOSE_DISCONNECTED : CLOSE_KICKED;
      return { sessions: deps.router.disconnect(userId, req.sessionId, code, req.reason) };
    },

    async registerDevice(req, ctx) {
      requireUserId(req.device?.userId ?? "", "device.user_id");
      await deps.push.registerDevice(
        { ...(req.device ? { device: req.device } : {}) },
        { deadline: ctx.deadline },
      );
      return {};
    },

    async unregisterDevice(req, ctx) {
      await deps.push.unregisterDevice(
        { userId: requireUserId(req.userId), deviceId: req.deviceId },
        { deadline: ctx.deadline },
      );
      return {};
    },

    async listDevices(req, ctx) {
      const { devices } = await deps.push.listDevices(
        { userId: requireUserId(req.userId) },
        { deadline: ctx.deadline },
      );
      return { devices };
    },

    async listPushDeadLetters(req, ctx) {
      // The stores take a malformed id for one past every dead letter: an empty page, not an error. A
      // well-formed one pages by its place, whether or not it is still there (replayed since).
      if (req.beforeId !== "" && !parseDeadLetterId(req.beforeId))
        throw errors.invalid("INVALID_BEFORE_ID", "before_id is not of a dead letter's form");
      const page = await deps.push.listDeadLetters(
        { limit: req.limit, beforeId: req.beforeId },
        { deadline: ctx.deadline },
      );
      return { deadLetters: page.deadLetters };
    },

    async replayPushDeadLetters(req, ctx) {
      const r = await deps.push.replayDeadLetters({ ids: req.ids }, { deadline: ctx.deadline });
      return { replayedIds: r.replayedIds, missingIds: r.missingIds, deviceGoneIds: r.deviceGoneIds };
    },

    streamEvents(requests, ctx) {
      const { principal } = ctx;
      return streamEvents(
        {
          stops,
          log: deps.log,
          access: access(principal),
          accessNow: () => (mayStreamEvents(principal, deps.policy()) ? access(principal) : undefined),
        },
        requests,
        ctx,
      );
    },
  };
}

/** ListMembers' page token: the last user id of the page before, opaque to callers. */
const tokenAfter = (userId: string): string => Buffer.from(`after:${userId}`).toString("base64url");

function afterOfToken(token: string): string {
  const text = /^[A-Za-z0-9_-]{1,200}$/.test(token) ? Buffer.from(token, "base64url").toString() : "";
  const userId = text.startsWith("after:") ? text.slice("after:".length) : "";
  if (!isValidUserId(userId))
    throw errors.invalid("INVALID_PAGE_TOKEN", "page_token is not a next_page_token ListMembers gave");
  return userId;
}

/**
 * Whether the caller may still stream events under the policy as it is now (the guard checked it
 * when the stream opened). Only backend clients' grants change with the policy file.
 */
function mayStreamEvents(principal: string | undefined, policy: Policy): boolean {
  if (principal === undefined || !principal.startsWith("client:")) return true;
  return policy.clients.get(principal.slice("client:".length))?.permissions.has("events") ?? false;
}
