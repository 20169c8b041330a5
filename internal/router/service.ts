import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { MessageStore } from "../backends/types.js";
import {
  type Conversations,
  requireConversationId,
  SYSTEM_SENDER,
  toWireConversation,
  toWireMessage,
} from "../conversations/index.js";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";
import type { Router } from "./router.js";

/** The router's gRPC API for trusted backend services (no per-user authorisation). */
export function routerServiceImpl(
  router: Router,
  conversations: Conversations,
  messages: MessageStore,
  pageSizeMax: number,
): ServiceImpl<typeof RouterService> {
  return {
    async sendMessage(req) {
      const { message, duplicate } = await conversations.send({
        sender: req.sender || SYSTEM_SENDER,
        ...(req.toUser ? { toUser: req.toUser } : { conversationId: req.conversationId }),
        clientMsgId: req.clientMsgId,
        body: req.body,
      });
      return { message: toWireMessage(message), duplicate };
    },
    async createGroup(req) {
      if (!req.owner) throw errors.invalid("INVALID_OWNER", "owner is required");
      return {
        conversation: toWireConversation(
          await conversations.createGroup(req.owner, req.name, req.members, req.open),
        ),
      };
    },
    async addMembers(req) {
      return {
        conversation: toWireConversation(
          await conversations.addMembers(undefined, req.conversationId, req.members),
        ),
      };
    },
    async removeMember(req) {
      return { conversation: toWireConversation(await conversations.leave(req.userId, req.conversationId)) };
    },
    async listMembers(req) {
      return { members: await conversations.members(undefined, req.conversationId) };
    },
    async getHistory(req) {
      const page = await messages.history(requireConversationId(req.conversationId), {
        beforeSeq: Number(req.beforeSeq),
        limit: Math.min(req.limit || 50, pageSizeMax),
      });
      return { messages: page.messages.map(toWireMessage), hasMore: page.hasMore };
    },
    async lookupUser(req) {
      return {
        sessions: router.lookup(req.userId).map((s) => ({
          userId: req.userId,
          sessionId: s.sessionId,
          gatewayId: s.gatewayId,
          gatewayEpoch: BigInt(s.gatewayEpoch),
        })),
      };
    },
    async relay(req) {
      if (!req.frame) throw errors.invalid("MISSING_FRAME", "frame is required");
      // Reached after its caller gave up (this router was paused, or the network held the call):
      // the client was told the request failed, so nobody may see the event now.
      if (req.expiresAtMs > 0n && Date.now() > Number(req.expiresAtMs)) {
        router.relayExpired();
        throw new SwitchboardError(
          Code.DEADLINE_EXCEEDED,
          "DEADLINE_EXCEEDED",
          "the event expired before it was relayed",
        );
      }
      return { sessions: router.relay(req.userIds, req.sessionIds, req.excludeSessionId, req.frame) };
    },
  };
}
