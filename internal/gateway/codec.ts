/**
 * The client wire format: one ClientFrame per WebSocket message, proto3 JSON in text frames and
 * protobuf in binary frames. Replies use the encoding of the request; pushed events use the
 * connection's encoding (from the subprotocol, else the last frame the client sent).
 */
import {
  create,
  fromBinary,
  fromJson,
  type JsonValue,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { BinaryReader, configureTextEncoding, getTextEncoding, WireType } from "@bufbuild/protobuf/wire";
import {
  type ClientFrame,
  ClientFrameSchema,
  type ServerFrame,
  ServerFrameSchema,
} from "../../gen/switchboard/client/v1/client_pb.js";
import { type Message, MessageSchema } from "../../gen/switchboard/common/v1/common_pb.js";
import { errors, SwitchboardError } from "../lib/errors.js";

export type Encoding = "json" | "binary";
export const SUBPROTOCOL_JSON = "switchboard.v1.json";
export const SUBPROTOCOL_BINARY = "switchboard.v1.proto";

export type ServerFrameInit = MessageInitShape<typeof ServerFrameSchema>;

/**
 * Decodes one client frame. Throws MALFORMED_FRAME for anything that is not a ClientFrame, and
 * INVALID_UNICODE for a frame that is one except that a string holds text no UTF-8 can carry: a lone
 * UTF-16 surrogate escaped in JSON ("\ud800"), or invalid UTF-8 in a binary frame. That frame's id
 * is readable (see peekRequest), so it is answered like any refused request.
 */
export function decodeClientFrame(data: Buffer, isBinary: boolean): ClientFrame {
  try {
    return isBinary ? fromBinary(ClientFrameSchema, data) : decodeJson(data.toString("utf8"));
  } catch (err) {
    if (err instanceof SwitchboardError) throw err;
    if (isBinary && isInvalidUtf8(err) && decodesWithLenientUtf8(data)) throw invalidUnicode();
    const detail = err instanceof Error ? err.message.slice(0, 200) : "unparseable";
    throw Object.assign(errors.invalid("MALFORMED_FRAME", `frame is not a valid ClientFrame: ${detail}`), {
      cause: err,
    });
  }
}

function decodeJson(text: string): ClientFrame {
  const json = JSON.parse(text) as JsonValue;
  try {
    return fromJson(ClientFrameSchema, json, { ignoreUnknownFields: false });
  } catch (err) {
    // protobuf-es refuses strings that are not well-formed UTF-16 ("invalid UTF8"); say so precisely,
    // but only of a frame whose text is all that is wrong with it (else it is malformed like any other).
    if (holdsLoneSurrogate(json) && decodesWithWholeCharacters(text)) throw invalidUnicode();
    throw err;
  }
}

/** Whether the frame decodes once each lone surrogate in its strings is a whole character (U+FFFD). */
function decodesWithWholeCharacters(text: string): boolean {
  try {
    const json = JSON.parse(text, (_key, value: unknown) =>
      typeof value === "string" ? wholeCharacters(value) : value,
    ) as JsonValue;
    fromJson(ClientFrameSchema, json, { ignoreUnknownFields: false });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a binary frame decodes once invalid UTF-8 in its strings is read as U+FFFD. protobuf-es
 * takes its UTF-8 decoder from library-wide settings, not per call, so the lenient one is put in for
 * this one synchronous decode and the strict one back before anything else can run. Only refused
 * frames get here.
 */
function decodesWithLenientUtf8(data: Buffer): boolean {
  const strict = getTextEncoding();
  configureTextEncoding({ ...strict, decodeUtf8: (bytes) => LENIENT_UTF8.decode(bytes) });
  try {
    fromBinary(ClientFrameSchema, data);
    return true;
  } catch {
    return false;
  } finally {
    configureTextEncoding(strict);
  }
}

const LENIENT_UTF8 = new TextDecoder("utf-8", { ignoreBOM: true });

function invalidUnicode(): SwitchboardError {
  return errors.invalid(
    "INVALID_UNICODE",
    "a string in the frame is not valid Unicode (a lone UTF-16 surrogate, or invalid UTF-8)",
  );
}

/** Node's TextDecoder({fatal: true}), which protobuf-es uses for proto3 strings, throws this. */
function isInvalidUtf8(err: unknown): boolean {
  return (
    err instanceof TypeError && (err as NodeJS.ErrnoException).code === "ERR_ENCODING_INVALID_ENCODED_DATA"
  );
}

/** In a `u` regex a surrogate pair is one code point, so \p{Cs} matches only lone surrogates. */
const LONE_SURROGATE = /\p{Cs}/u;
const LONE_SURROGATES = /\p{Cs}/gu;

/**
 * The text with each lone surrogate made U+FFFD. What the server writes must be Unicode text too: an
 * error's message can quote a client's frame (a parser's complaint, cut at 200 characters), and in a
 * JSON frame a lone surrogate becomes "\ud800", which a strict client refuses to decode.
 */
export function wholeCharacters(text: string): string {
  return text.replace(LONE_SURROGATES, "\uFFFD");
}

/** Whether any key or string in the parsed JSON holds a lone surrogate (iterative: depth is the client's). */
function holdsLoneSurrogate(root: JsonValue): boolean {
  const stack: JsonValue[] = [root];
  for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
    if (typeof v === "string") {
      if (LONE_SURROGATE.test(v)) return true;
    } else if (Array.isArray(v)) {
      stack.push(...v);
    } else if (v !== null && typeof v === "object") {
      for (const [k, child] of Object.entries(v)) {
        if (LONE_SURROGATE.test(k)) return true;
        stack.push(child);
      }
    }
  }
  return false;
}

/** The request kinds (the ClientFrame oneof `kind`) by field number and by JSON key. */
const KIND_FIELDS = ClientFrameSchema.fields.filter((f) => f.oneof?.name === "kind");
const KIND_BY_NUMBER = new Map(KIND_FIELDS.map((f) => [f.number, f.localName]));
const KIND_BY_KEY = new Map(
  KIND_FIELDS.flatMap((f) => [[f.jsonName, f.localName] as const, [f.name, f.localName] as const]),
);

/**
 * The id and request kind of a frame decodeClientFrame refused with INVALID_UNICODE, read without
 * decoding its strings; id 0 and kind "none" where they cannot be read.
 */
export function peekRequest(data: Buffer, isBinary: boolean): { id: number; request: string } {
  try {
    return isBinary ? peekBinary(data) : peekJson(data.toString("utf8"));
  } catch {
    return { id: 0, request: "none" };
  }
}

function peekJson(text: string): { id: number; request: string } {
  const json = JSON.parse(text) as JsonValue;
  if (json === null || typeof json !== "object" || Array.isArray(json)) return { id: 0, request: "none" };
  // The id as proto3 JSON reads it (a number or a decimal string in uint32 range).
  const id = json.id === undefined ? 0 : fromJson(ClientFrameSchema, { id: json.id }).id;
  const key = Object.keys(json).find((k) => KIND_BY_KEY.has(k));
  return { id, request: key === undefined ? "none" : KIND_BY_KEY.get(key)! };
}

function peekBinary(data: Buffer): { id: number; request: string } {
  const reader = new BinaryReader(data);
  let id = 0;
  let request = "none";
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo === 1 && wireType === WireType.Varint) {
      id = reader.uint32();
      continue;
    }
    request = KIND_BY_NUMBER.get(fieldNo) ?? request;
    reader.skip(wireType, fieldNo);
  }
  return { id, request };
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
