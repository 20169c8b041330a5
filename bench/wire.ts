/**
 * Hot-path wire helpers for the load generator: hand-rolled protobuf (and proto3 JSON) encoding of
 * ClientFrame{send} and a minimal decoder that pulls out only what the generator needs (reply_to,
 * the frame kind, and the message's client_msg_id), so the generator spends its core on sockets,
 * not on building message objects. `selfCheck()` proves the hand encoding against @bufbuild/protobuf.
 *
 * Field numbers (proto/switchboard/client/v1/client.proto, common/v1/common.proto):
 *   ClientFrame: id=1 (uint32), send=11 (Send), sync=12 (Sync)
 *   Send: to_user=2, client_msg_id=3, body=4
 *   ServerFrame: reply_to=1, welcome=10, ack=11, message=12, sync=13, error=24
 *   MessageEvent: message=1 (common.v1.Message), cursor=2;  Message: client_msg_id=5, body=6
 *   SyncResult: messages=1, cursor=2, has_more=3
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ClientFrameSchema, ServerFrameSchema } from "../gen/switchboard/client/v1/client_pb.js";

export type Encoding = "binary" | "json";
export const SUBPROTOCOL: Record<Encoding, string> = {
  binary: "switchboard.v1.proto",
  json: "switchboard.v1.json",
};

export const KIND_WELCOME = 10;
export const KIND_ACK = 11;
export const KIND_MESSAGE = 12;
export const KIND_SYNC = 13;
export const KIND_ERROR = 24;

export function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

export function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

function writeDecimal(buf: Buffer, pos: number, n: number, width: number): number {
  for (let i = pos + width - 1; i >= pos; i--) {
    buf[i] = 48 + (n % 10);
    n = Math.floor(n / 10);
  }
  return pos + width;
}

/**
 * A ready-made sender: `encode(g)` returns ClientFrame{id: g, send{to_user, client_msg_id: "g", body,
 * first_attempt}}. Each g is sent once, so every send is its key's first attempt (as the SDK marks
 * the sends whose key it made up).
 */
export interface SendEncoder {
  encode(g: number): Buffer | string;
}

export function sendEncoder(encoding: Encoding, toUser: string, body: string): SendEncoder {
  if (encoding === "json") {
    const tail = `","body":${JSON.stringify(body)},"firstAttempt":true}}`;
    const mid = `,"send":{"toUser":${JSON.stringify(toUser)},"clientMsgId":"`;
    return { encode: (g) => `{"id":${g}${mid}${g}${tail}` };
  }
  const to = Buffer.from(toUser, "utf8");
  const b = Buffer.from(body, "utf8");
  const fixed = 1 + varintSize(to.length) + to.length + 1 + varintSize(b.length) + b.length + 2;
  return {
    encode(g: number): Buffer {
      const cmidLen = digits(g);
      const sendLen = fixed + 2 + cmidLen; // cmid < 128 chars: one-byte length
      const total = 1 + varintSize(g) + 1 + varintSize(sendLen) + sendLen;
      const buf = Buffer.allocUnsafe(total);
      let p = 0;
      buf[p++] = 0x08; // id, varint
      p = writeVarint(buf, p, g);
      buf[p++] = 0x5a; // send (11), LEN
      p = writeVarint(buf, p, sendLen);
      buf[p++] = 0x12; // to_user (2)
      p = writeVarint(buf, p, to.length);
      p += to.copy(buf, p);
      buf[p++] = 0x1a; // client_msg_id (3)
      buf[p++] = cmidLen;
      p = writeDecimal(buf, p, g, cmidLen);
      buf[p++] = 0x22; // body (4)
      p = writeVarint(buf, p, b.length);
      p += b.copy(buf, p);
      buf[p++] = 0x30; // first_attempt (6), varint
      buf[p] = 1;
      return buf;
    },
  };
}

/** A decoded server frame header: the oneof field number and where its payload lies. */
export interface FrameHead {
  replyTo: number;
  kind: number;
  /** Payload bounds of the kind (binary only). */
  start: number;
  end: number;
  /** client_msg_id of a JSON message event (binary: use messageEventCmid). */
  cmid: number;
}

export function newHead(): FrameHead {
  return { replyTo: 0, kind: 0, start: 0, end: 0, cmid: -1 };
}

let pos = 0;

function readVarint(buf: Uint8Array): number {
  let result = 0;
  let mul = 1;
  for (;;) {
    const byte = buf[pos++]!;
    result += (byte & 0x7f) * mul;
    if (byte < 0x80) return result;
    mul *= 128;
  }
}

function skip(buf: Uint8Array, wire: number): void {
  switch (wire) {
    case 0:
      readVarint(buf);
      return;
    case 1:
      pos += 8;
      return;
    case 2: {
      const len = readVarint(buf);
      pos += len;
      return;
    }
    case 5:
      pos += 4;
      return;
    default:
      throw new Error(`unsupported wire type ${wire}`);
  }
}

/** Reads a binary ServerFrame's reply_to and its kind (the oneof's field number and payload bounds). */
export function headBinary(buf: Uint8Array, out: FrameHead): FrameHead {
  out.replyTo = 0;
  out.kind = 0;
  out.start = 0;
  out.end = 0;
  pos = 0;
  const end = buf.length;
  while (pos < end) {
    const tag = readVarint(buf);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === 0) {
      out.replyTo = readVarint(buf);
    } else if (field >= 10 && wire === 2) {
      const len = readVarint(buf);
      out.kind = field;
      out.start = pos;
      out.end = pos + len;
      pos += len;
    } else {
      skip(buf, wire);
    }
  }
  return out;
}

/** Finds a LEN field `field` within [start, end); returns its [start, end) or -1. */
function findLen(buf: Uint8Array, start: number, end: number, field: number): number {
  pos = start;
  while (pos < end) {
    const tag = readVarint(buf);
    const wire = tag & 7;
    if (Math.floor(tag / 8) === field && wire === 2) {
      const len = readVarint(buf);
      const s = pos;
      pos = s + len;
      foundEnd = pos;
      return s;
    }
    skip(buf, wire);
  }
  return -1;
}
let foundEnd = 0;

/**
 * The numeric client_msg_id of a MessageEvent payload (ServerFrame.message), or -1 when absent or
 * not a number (i.e. not one of ours).
 */
export function messageEventCmid(buf: Uint8Array, start: number, end: number): number {
  const m = findLen(buf, start, end, 1);
  if (m < 0) return -1;
  const mEnd = foundEnd;
  const c = findLen(buf, m, mEnd, 5);
  if (c < 0) return -1;
  return parseDigits(buf, c, foundEnd);
}

function parseDigits(buf: Uint8Array, start: number, end: number): number {
  if (start >= end) return -1;
  let n = 0;
  for (let i = start; i < end; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

const JSON_CMID = '"clientMsgId":"';
const JSON_REPLY = '"replyTo":';

/** JSON counterpart of headBinary + messageEventCmid (the kind is told by its key). */
export function headJson(text: string, out: FrameHead): FrameHead {
  out.replyTo = 0;
  out.cmid = -1;
  let i = text.indexOf(JSON_REPLY);
  if (i >= 0 && i < 4) {
    i += JSON_REPLY.length;
    let n = 0;
    for (let c = text.charCodeAt(i); c >= 48 && c <= 57; c = text.charCodeAt(++i)) n = n * 10 + c - 48;
    out.replyTo = n;
  }
  // proto3 JSON emits fields in field-number order: reply_to first, then the oneof key.
  const k = text.indexOf('":', out.replyTo > 0 ? i : 0);
  const key = text.slice(text.lastIndexOf('"', k - 1) + 1, k);
  out.kind = JSON_KINDS[key] ?? 0;
  if (out.kind === KIND_MESSAGE) {
    let j = text.indexOf(JSON_CMID);
    if (j >= 0) {
      j += JSON_CMID.length;
      let n = 0;
      let c = text.charCodeAt(j);
      if (c < 48 || c > 57) n = -1;
      else for (; c >= 48 && c <= 57; c = text.charCodeAt(++j)) n = n * 10 + c - 48;
      out.cmid = text.charCodeAt(j) === 34 ? n : -1;
    }
  }
  return out;
}
const JSON_KINDS: Record<string, number> = {
  welcome: KIND_WELCOME,
  ack: KIND_ACK,
  message: KIND_MESSAGE,
  sync: KIND_SYNC,
  error: KIND_ERROR,
};

/** A sync request frame. */
export function syncFrame(encoding: Encoding, id: number, cursor: bigint): Buffer | string {
  if (encoding === "json") return JSON.stringify({ id, sync: { cursor: cursor.toString() } });
  return Buffer.from(
    toBinary(ClientFrameSchema, create(ClientFrameSchema, { id, kind: { case: "sync", value: { cursor } } })),
  );
}

/** Decodes a (rare, not hot) frame fully; text frames are parsed as plain JSON. */
export function decodeFull(data: Buffer | string): {
  replyTo: number;
  kind: string;
  value: Record<string, unknown> | undefined;
} {
  if (typeof data === "string") {
    const o = JSON.parse(data) as Record<string, unknown>;
    const replyTo = Number(o.replyTo ?? 0);
    const kind = Object.keys(o).find((k) => k !== "replyTo") ?? "";
    return { replyTo, kind, value: o[kind] as Record<string, unknown> | undefined };
  }
  const f = fromBinary(ServerFrameSchema, data);
  return {
    replyTo: f.replyTo,
    kind: f.kind.case ?? "",
    value: f.kind.value as unknown as Record<string, unknown> | undefined,
  };
}

/** Proves the hand encoder/decoder against @bufbuild/protobuf; throws on mismatch. */
export function selfCheck(): void {
  for (const g of [0, 1, 127, 128, 99_999, 4_000_000_001]) {
    const body = "x".repeat(100);
    const bin = sendEncoder("binary", "r42", body).encode(g) as Buffer;
    const frame = fromBinary(ClientFrameSchema, bin);
    if (
      frame.id !== g ||
      frame.kind.case !== "send" ||
      frame.kind.value.target.case !== "toUser" ||
      frame.kind.value.target.value !== "r42" ||
      frame.kind.value.clientMsgId !== String(g) ||
      frame.kind.value.body !== body ||
      !frame.kind.value.firstAttempt
    )
      throw new Error(`hand-encoded send frame ${g} does not round-trip`);
    const json = JSON.parse(sendEncoder("json", "r42", body).encode(g) as string);
    if (
      json.id !== g ||
      json.send.clientMsgId !== String(g) ||
      json.send.body !== body ||
      json.send.firstAttempt !== true
    )
      throw new Error("JSON send frame does not round-trip");
  }
  const event = toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, {
      kind: {
        case: "message",
        value: {
          message: {
            conversationId: "dm:r1~s1",
            seq: 5n,
            messageId: "123",
            sender: "s1",
            clientMsgId: "1234567",
            body: "hello",
            createdAtMs: 1n,
          },
          cursor: 77n,
        },
      },
    }),
  );
  const h = headBinary(event, newHead());
  if (h.kind !== KIND_MESSAGE || messageEventCmid(event, h.start, h.end) !== 1234567)
    throw new Error("binary MessageEvent decode failed");
  const ack = toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, {
      replyTo: 300_000,
      kind: { case: "ack", value: { messageId: "9", seq: 3n } },
    }),
  );
  const a = headBinary(ack, newHead());
  if (a.kind !== KIND_ACK || a.replyTo !== 300_000) throw new Error("binary ack decode failed");
  const jm = headJson(
    '{"message":{"message":{"conversationId":"dm:a~b","seq":"1","clientMsgId":"42","body":"x"},"cursor":"1"}}',
    newHead(),
  );
  if (jm.kind !== KIND_MESSAGE || jm.cmid !== 42) throw new Error("JSON MessageEvent decode failed");
  const ja = headJson('{"replyTo":17,"ack":{"messageId":"1"}}', newHead());
  if (ja.kind !== KIND_ACK || ja.replyTo !== 17) throw new Error("JSON ack decode failed");
}
