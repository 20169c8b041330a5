/**
 * The client wire format: one ClientFrame per WebSocket message, proto3 JSON in text frames and
 * protobuf in binary frames. Replies use the encoding of the request; pushed events use the
 * connection's encoding (from the subprotocol, else the last frame the client sent).
 */
import {
  create,
  fromBinary,
  fromJsonString,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import {
  type ClientFrame,
  ClientFrameSchema,
  type ServerFrame,
  ServerFrameSchema,
} from "../../gen/switchboard/client/v1/client_pb.js";
import { errors } from "../lib/errors.js";

export type Encoding = "json" | "binary";
export const SUBPROTOCOL_JSON = "switchboard.v1.json";
export const SUBPROTOCOL_BINARY = "switchboard.v1.proto";

export type ServerFrameInit = MessageInitShape<typeof ServerFrameSchema>;

export function decodeClientFrame(data: Buffer, isBinary: boolean): ClientFrame {
  try {
    return isBinary
      ? fromBinary(ClientFrameSchema, data)
      : fromJsonString(ClientFrameSchema, data.toString("utf8"), { ignoreUnknownFields: false });
  } catch (err) {
    const detail = err instanceof Error ? err.message.slice(0, 200) : "unparseable";
    throw Object.assign(errors.invalid("MALFORMED_FRAME", `frame is not a valid ClientFrame: ${detail}`), {
      cause: err,
    });
  }
}

export function encodeServerFrame(
  frame: ServerFrame | ServerFrameInit,
  encoding: Encoding,
): string | Uint8Array {
  const message = create(ServerFrameSchema, frame);
  return encoding === "binary"
    ? toBinary(ServerFrameSchema, message)
    : toJsonString(ServerFrameSchema, message);
}
