/** Opening authenticated benchmark clients (token in the upgrade's Authorization header). */
import { SignJWT } from "jose";
import WebSocket from "ws";
import { devSecret } from "../internal/lib/auth.js";
import { decodeFull, type Encoding, SUBPROTOCOL, syncFrame } from "./wire.js";

/** Mints HS256 dev tokens with the server's secret (read once, as the server's `token` command does). */
export function mintTokens(dataDir: string, users: string[], ttlSeconds = 3600): Promise<string[]> {
  return signTokens(devSecret(dataDir), users, ttlSeconds);
}

/** HS256 tokens whose subject is each user, signed with `secret` (a peer's, in the comparisons). */
export async function signTokens(secret: Uint8Array, users: string[], ttlSeconds = 3600): Promise<string[]> {
  const exp = Math.floor(Date.now() / 1000) + ttlSeconds;
  const out: string[] = [];
  for (const u of users) {
    out.push(
      await new SignJWT({})
        .setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setSubject(u)
        .setIssuedAt()
        .setExpirationTime(exp)
        .sign(secret),
    );
  }
  return out;
}

const zeroMask = (mask: Buffer) => mask.fill(0);

export interface ClientOptions {
  url: string;
  token: string;
  encoding: Encoding;
  localAddress?: string;
  timeoutMs?: number;
}

/** Opens a WebSocket and resolves once the server's welcome arrived (the connection is registered). */
export function openClient(opts: ClientOptions): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(opts.url, SUBPROTOCOL[opts.encoding], {
      headers: { Authorization: `Bearer ${opts.token}` },
      perMessageDeflate: false,
      skipUTF8Validation: true,
      // The client's masking key only costs the generator CPU; a zero key skips the XOR pass.
      generateMask: zeroMask,
      handshakeTimeout: opts.timeoutMs ?? 30_000,
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error("no welcome within timeout"));
    }, opts.timeoutMs ?? 30_000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      ws.removeAllListeners("message");
      reject(err);
    };
    ws.once("error", fail);
    ws.once("close", (code, reason) => fail(new Error(`closed ${code} ${reason.toString()}`)));
    ws.once("unexpected-response", (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)));
    ws.once("message", (data: Buffer, isBinary: boolean) => {
      clearTimeout(timer);
      ws.removeAllListeners("error");
      ws.removeAllListeners("close");
      ws.on("error", () => undefined);
      const frame = decodeFull(isBinary ? data : data.toString("utf8"));
      if (frame.kind !== "welcome") return reject(new Error(`expected welcome, got ${frame.kind}`));
      resolve(ws);
    });
  });
}

/**
 * Syncs from cursor 0 until has_more is false: the connection then receives live messages.
 * `onPage` sees each page's decoded SyncResult (the storm counts the messages it brings).
 */
export function syncToLive(
  ws: WebSocket,
  encoding: Encoding,
  onPage?: (page: Record<string, unknown> | undefined) => void,
): Promise<bigint> {
  return new Promise((resolve, reject) => {
    let id = 1;
    const onMessage = (data: Buffer, isBinary: boolean) => {
      const frame = decodeFull(isBinary ? data : data.toString("utf8"));
      if (frame.replyTo !== id) return;
      if (frame.kind !== "sync") {
        ws.off("message", onMessage);
        return reject(new Error(`sync failed: ${JSON.stringify(frame.value)}`));
      }
      onPage?.(frame.value);
      const cursor = BigInt(String(frame.value?.cursor ?? 0));
      if (frame.value?.hasMore) {
        ws.send(syncFrame(encoding, ++id, cursor));
        return;
      }
      ws.off("message", onMessage);
      resolve(cursor);
    };
    ws.on("message", onMessage);
    ws.send(syncFrame(encoding, id, 0n));
  });
}

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function pool<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
