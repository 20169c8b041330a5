/**
 * The WebSocket seam. The SDK only needs the small surface browsers' WebSocket and the `ws` package
 * share (on* handlers, send, close, binaryType), so it talks to this interface and casts once.
 */
import { fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import {
  type ClientFrame,
  ClientFrameSchema,
  type ServerFrame,
  ServerFrameSchema,
} from "../../gen/switchboard/client/v1/client_pb.js";

/** What the SDK uses of a WebSocket. */
export interface SocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the TCP connection without a closing handshake. */
  terminate?: () => void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: { message?: string; error?: unknown }) => void) | null;
}

/**
 * Any WebSocket constructor: the browser's, undici's, or `ws`'s. Typed loosely on purpose: the DOM
 * and `ws` typings are incompatible in their event types, and we only touch the shared surface.
 */
export type WebSocketConstructor = new (url: string, ...rest: never[]) => object;

/** How the token reaches the server. */
export type AuthMode = "header" | "frame";

export interface ResolvedWebSocket {
  ctor: WebSocketConstructor;
  /** Default auth mode: header only for the `ws` package we import ourselves (browsers cannot set headers). */
  auth: AuthMode;
}

export const OPEN = 1;

/**
 * Picks the WebSocket implementation: an explicit one, else the global (browsers, Node >= 22), else
 * the `ws` package, imported dynamically so browser bundles never see it (the specifier is a
 * variable to keep bundlers from resolving it).
 */
export async function resolveWebSocket(
  explicit: WebSocketConstructor | undefined,
): Promise<ResolvedWebSocket> {
  if (explicit) return { ctor: explicit, auth: "frame" };
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global) return { ctor: global, auth: "frame" };
  const specifier = "ws";
  const mod = (await import(/* @vite-ignore */ specifier)) as {
    WebSocket?: WebSocketConstructor;
    default?: WebSocketConstructor;
  };
  const ctor = mod.WebSocket ?? mod.default;
  if (!ctor) throw new Error('no global WebSocket and the "ws" package has no WebSocket export');
  return { ctor, auth: "header" };
}

/**
 * WebSocket subprotocols naming the encoding. Offering one lets the gateway pick the encoding at the
 * upgrade, so even the welcome (sent before the client's first frame when the token came in the
 * header) arrives in the client's encoding.
 */
export const SUBPROTOCOLS = { json: "switchboard.v1.json", binary: "switchboard.v1.proto" } as const;

/** Opens a socket; with "header" auth the token goes in the upgrade's Authorization header (ws only). */
export function openSocket(
  ctor: WebSocketConstructor,
  url: string,
  token: string,
  auth: AuthMode,
  encoding: Encoding,
): SocketLike {
  const Ctor = ctor as unknown as new (url: string, protocols: string[], options?: unknown) => SocketLike;
  const protocols = [SUBPROTOCOLS[encoding]];
  const socket =
    auth === "header"
      ? new Ctor(url, protocols, { headers: { Authorization: `Bearer ${token}` } })
      : new Ctor(url, protocols);
  socket.binaryType = "arraybuffer";
  return socket;
}

/** The HTTP status of a refused upgrade, when the implementation tells us (ws: "Unexpected server response: 401"). */
export function upgradeStatus(event: { message?: string; error?: unknown }): number | undefined {
  const text = event.message ?? (event.error instanceof Error ? event.error.message : "");
  const m = /Unexpected server response: (\d{3})/.exec(text ?? "");
  return m ? Number(m[1]) : undefined;
}

export type Encoding = "json" | "binary";

export function encodeFrame(frame: ClientFrame, encoding: Encoding): string | Uint8Array {
  return encoding === "json" ? toJsonString(ClientFrameSchema, frame) : toBinary(ClientFrameSchema, frame);
}

/** Size on the wire, in bytes. */
export function encodedSize(data: string | Uint8Array): number {
  if (typeof data !== "string") return data.byteLength;
  // UTF-8 is at most 3 bytes per UTF-16 unit: skip the encode when that bound is already small.
  return data.length < 256 ? utf8Length(data) : new TextEncoder().encode(data).byteLength;
}

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * Decodes whatever arrives: text frames are proto3 JSON, binary frames protobuf (the server answers
 * in the client's encoding, but accepting both costs nothing). Unknown JSON fields are ignored so a
 * newer server can add fields.
 */
export function decodeFrame(data: unknown): ServerFrame {
  if (typeof data === "string") return fromJsonString(ServerFrameSchema, data, { ignoreUnknownFields: true });
  if (data instanceof ArrayBuffer) return fromBinary(ServerFrameSchema, new Uint8Array(data));
  if (ArrayBuffer.isView(data)) {
    return fromBinary(ServerFrameSchema, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  if (Array.isArray(data)) {
    // ws with binaryType "fragments" (not what we set, but be liberal).
    const parts = data as Uint8Array[];
    const total = parts.reduce((n, p) => n + p.byteLength, 0);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      joined.set(p, at);
      at += p.byteLength;
    }
    return fromBinary(ServerFrameSchema, joined);
  }
  throw new TypeError(`unsupported WebSocket message data: ${Object.prototype.toString.call(data)}`);
}
