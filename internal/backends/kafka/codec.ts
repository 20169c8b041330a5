/** Records carry common.v1.Message in protobuf (drafts have seq 0). */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { MessageSchema } from "../../../gen/switchboard/common/v1/common_pb.js";
import type { MessageDraft, SessionEvent, StoredMessage } from "../types.js";

export function encodeMessage(m: MessageDraft | StoredMessage): Buffer {
  return Buffer.from(
    toBinary(
      MessageSchema,
      create(MessageSchema, {
        conversationId: m.conversationId,
        seq: BigInt("seq" in m ? m.seq : 0),
        messageId: m.messageId,
        sender: m.sender,
        clientMsgId: m.clientMsgId,
        body: m.body,
        createdAtMs: BigInt(m.createdAtMs),
      }),
    ),
  );
}

export function decodeMessage(data: Buffer): StoredMessage {
  const m = fromBinary(MessageSchema, data);
  return {
    conversationId: m.conversationId,
    seq: Number(m.seq),
    messageId: m.messageId,
    sender: m.sender,
    clientMsgId: m.clientMsgId,
    body: m.body,
    createdAtMs: Number(m.createdAtMs),
  };
}

export function encodeSessionEvent(e: SessionEvent): Buffer {
  return Buffer.from(JSON.stringify(e));
}

export function decodeSessionEvent(data: Buffer): SessionEvent {
  return JSON.parse(data.toString("utf8")) as SessionEvent;
}
