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
import { type Message, MessageSchema } from "../../gen/switchboard/common/v1/common_pb.js";
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

/**
 * The frames of one message event for many recipients. Only the cursor differs between them, so
 * the message is encoded once (per encoding) and each recipient's cursor is spliced in; the bytes
 * are exactly what encodeServerFrame would produce (codec.test.ts checks it).
 */
export class MessageEventFrames {
  private binary: Uint8Array | undefined;
  private json: string | undefined;

  constructor(private readonly message: Message) {}

  frame(cursor: bigint, encoding: Encoding): string | Uint8Array {
    return encoding === "binary" ? this.binaryFrame(cursor) : this.jsonFrame(cursor);
  }

  /** ServerFrame{message (12): MessageEvent{message (1): bytes, cursor (2): varint}}. */
  private binaryFrame(cursor: bigint): Uint8Array {
    this.binary ??= toBinary(MessageSchema, this.message);
    const msg = this.binary;
    // Inbox cursors count one user's messages: far below 2^53, so plain numbers are exact.
    const c = Number(cursor);
    const eventLength = 1 + varintSize(msg.length) + msg.length + (c === 0 ? 0 : 1 + varintSize(c));
    const out = new Uint8Array(1 + varintSize(eventLength) + eventLength);
    let p = 0;
    out[p++] = (12 << 3) | 2;
    p = writeVarint(out, p, eventLength);
    out[p++] = (1 << 3) | 2;
    p = writeVarint(out, p, msg.length);
    out.set(msg, p);
    p += msg.length;
    if (c !== 0) {
      out[p++] = 2 << 3;
      writeVarint(out, p, c);
    }
    return out;
  }

  /** {"message":{"message":{…},"cursor":"N"}} (proto3 JSON: uint64 as a string, zero omitted). */
  private jsonFrame(cursor: bigint): string {
    this.json ??= toJsonString(MessageSchema, this.message);
    return cursor === 0n
      ? `{"message":{"message":${this.json}}}`
      : `{"message":{"message":${this.json},"cursor":"${cursor}"}}`;
  }
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

function writeVarint(out: Uint8Array, p: number, n: number): number {
  while (n >= 0x80) {
    out[p++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[p++] = n;
  return p;
}
