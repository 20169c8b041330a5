/** Records carry common.v1.Message in protobuf (drafts have seq 0). */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { IHeaders } from "kafkajs";
import { MessageSchema } from "../../../gen/switchboard/common/v1/common_pb.js";
import { SessionRecordKind, SessionRecordSchema } from "../../../gen/switchboard/router/v1/router_pb.js";
import type { TraceCarrier } from "../../lib/tracing.js";
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

const KIND_TO_PROTO: Record<SessionEvent["kind"], SessionRecordKind> = {
  up: SessionRecordKind.UP,
  down: SessionRecordKind.DOWN,
  "gateway-gone": SessionRecordKind.GATEWAY_GONE,
};

/** Routing records are router.v1.SessionRecord in protobuf: the operator writes gateway-gone ones too. */
export function encodeSessionEvent(e: SessionEvent): Buffer {
  return Buffer.from(
    toBinary(
      SessionRecordSchema,
      create(SessionRecordSchema, {
        kind: KIND_TO_PROTO[e.kind],
        userId: e.userId,
        sessionId: e.sessionId,
        gatewayId: e.gatewayId,
        gatewayEpoch: BigInt(e.gatewayEpoch),
        gatewayAddress: e.gatewayAddress ?? "",
      }),
    ),
  );
}

/** Throws on a record that is not a SessionRecord or has no known kind (the caller skips it). */
export function decodeSessionEvent(data: Buffer): SessionEvent {
  const r = fromBinary(SessionRecordSchema, data);
  const kind =
    r.kind === SessionRecordKind.UP
      ? "up"
      : r.kind === SessionRecordKind.DOWN
        ? "down"
        : r.kind === SessionRecordKind.GATEWAY_GONE
          ? "gateway-gone"
          : undefined;
  if (kind === undefined) throw new Error(`routing record of unknown kind ${r.kind}`);
  return {
    kind,
    userId: r.userId,
    sessionId: r.sessionId,
    gatewayId: r.gatewayId,
    gatewayEpoch: Number(r.gatewayEpoch),
    ...(r.gatewayAddress ? { gatewayAddress: r.gatewayAddress } : {}),
  };
}

/** The W3C trace context a record carries in its `traceparent` and `tracestate` headers, if any. */
export function traceOf(headers: IHeaders | undefined): TraceCarrier | undefined {
  const traceparent = headers?.traceparent?.toString();
  if (!traceparent) return undefined;
  const tracestate = headers?.tracestate?.toString();
  return tracestate ? { traceparent, tracestate } : { traceparent };
}
