/** Stored records as the wire's protobuf shapes (common.v1 Message and Conversation). */
import { ConversationKind } from "../../gen/switchboard/common/v1/common_pb.js";
import type { ConversationRecord, StoredMessage } from "../backends/types.js";

export function toWireMessage(m: StoredMessage) {
  return {
    conversationId: m.conversationId,
    seq: BigInt(m.seq),
    messageId: m.messageId,
    sender: m.sender,
    clientMsgId: m.clientMsgId,
    body: m.body,
    createdAtMs: BigInt(m.createdAtMs),
  };
}

export function toWireConversation(c: ConversationRecord, lastSeq = 0, readSeq = 0) {
  return {
    id: c.id,
    kind: c.kind === "group" ? ConversationKind.GROUP : ConversationKind.DIRECT,
    name: c.name,
    owner: c.owner,
    memberCount: c.memberCount,
    open: c.open,
    lastSeq: BigInt(lastSeq),
    createdAtMs: BigInt(c.createdAtMs),
    readSeq: BigInt(readSeq),
  };
}
