/**
 * A Web Push service stand-in: a browser's subscriptions (a P-256 key pair and an auth secret each)
 * and the endpoint they name. Every request must carry a VAPID JWT that verifies with the key in its
 * `k=` parameter, which must be the application server key the subscriptions were made with (RFC
 * 8292: aud = this origin, exp within 24 h, sub a mailto: or https: URL), and a body that decrypts
 * with the subscription's private key (RFC 8291, aes128gcm): the stand-in does what a browser does.
 */
import { createDecipheriv, createECDH, type ECDH, hkdfSync, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { importJWK, jwtVerify } from "jose";
import { encodeBody, Script, type ScriptedAnswer } from "./scripted.js";

interface BrowserSubscription {
  id: string;
  ecdh: ECDH;
  auth: Buffer;
}

export interface WebPushDelivery {
  subscriptionId: string;
  headers: IncomingMessage["headers"];
  /** The decrypted payload. */
  payload: Record<string, string | number>;
}

/** A VAPID key pair in the formats the platform's configuration takes (base64url). */
export function vapidKeys(): { publicKey: string; privateKey: string } {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return {
    publicKey: ecdh.getPublicKey().toString("base64url"),
    privateKey: ecdh.getPrivateKey().toString("base64url"),
  };
}

/** RFC 8291 decryption, as the user agent does it: from the body and the subscription's secrets. */
export function decryptWebPush(body: Buffer, subscription: { ecdh: ECDH; auth: Buffer }): Buffer {
  const salt = body.subarray(0, 16);
  const recordSize = body.readUInt32BE(16);
  const keyIdLength = body.readUInt8(20);
  const senderPublic = body.subarray(21, 21 + keyIdLength);
  const record = body.subarray(21 + keyIdLength);
  if (record.length > recordSize) throw new Error("more than one record");
  const receiverPublic = subscription.ecdh.getPublicKey();
  const shared = subscription.ecdh.computeSecret(senderPublic);
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), receiverPublic, senderPublic]);
  const ikm = Buffer.from(hkdfSync("sha256", shared, subscription.auth, keyInfo, 32));
  const key = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: aes128gcm\0"), 16));
  const nonce = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: nonce\0"), 12));
  const decipher = createDecipheriv("aes-128-gcm", key, nonce);
  decipher.setAuthTag(record.subarray(record.length - 16));
  const padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  // RFC 8188 §2: the plaintext, a delimiter (2 for the last record), then zero padding.
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  if (padded[end] !== 0x02) throw new Error("no last-record delimiter");
  return padded.subarray(0, end);
}

export class WebPushStandIn {
  readonly script = new Script();
  readonly delivered: WebPushDelivery[] = [];
  private readonly subscriptions = new Map<string, BrowserSubscription>();
  private readonly server: Server;
  origin = "";

  /** With `tls` (a certificate for localhost) it serves https, as real push services do. */
  constructor(
    readonly applicationServerKey: string,
    private readonly tls?: { key: string; cert: string },
  ) {
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        this.handle(req, res, Buffer.concat(chunks)).catch((err: unknown) => {
          this.script.violation(`stand-in failed: ${String(err)}`);
          res.writeHead(500).end();
        });
      });
    };
    this.server = tls ? createTlsServer(tls, handler) : createServer(handler);
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const port = (this.server.address() as AddressInfo).port;
    this.origin = this.tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
    return this;
  }

  /** A new browser subscription; returns its id and the PushSubscription JSON a device registers. */
  subscribe(): { id: string; token: string } {
    const id = randomBytes(8).toString("hex");
    const ecdh = createECDH("prime256v1");
    ecdh.generateKeys();
    const auth = randomBytes(16);
    this.subscriptions.set(id, { id, ecdh, auth });
    const token = JSON.stringify({
      endpoint: `${this.origin}/push/${id}`,
      expirationTime: null,
      keys: { p256dh: ecdh.getPublicKey().toString("base64url"), auth: auth.toString("base64url") },
    });
    return { id, token };
  }

  private async handle(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const reply = (a: ScriptedAnswer) => res.writeHead(a.status, a.headers).end(encodeBody(a.body));
    const refuse = (status: number, reason: string) => {
      this.script.violation(reason);
      reply({ status, body: reason });
    };
    const id = /^\/push\/([0-9a-f]+)$/.exec(req.url ?? "")?.[1];
    const subscription = id ? this.subscriptions.get(id) : undefined;
    if (req.method !== "POST" || !subscription) return refuse(404, "no such subscription");
    const vapid = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(req.headers.authorization ?? "");
    if (!vapid) return refuse(401, "no VAPID authorization");
    if (vapid[2] !== this.applicationServerKey)
      return refuse(403, "not the subscription's application server key");
    const k = Buffer.from(vapid[2]!, "base64url");
    try {
      const key = await importJWK(
        {
          kty: "EC",
          crv: "P-256",
          x: k.subarray(1, 33).toString("base64url"),
          y: k.subarray(33, 65).toString("base64url"),
        },
        "ES256",
      );
      const { payload } = await jwtVerify(vapid[1]!, key, { algorithms: ["ES256"], audience: this.origin });
      if (!(Number(payload.exp) <= Date.now() / 1000 + 24 * 3600)) return refuse(403, "exp beyond 24 hours");
      if (!/^(mailto:|https:)/.test(String(payload.sub))) return refuse(403, "sub is not mailto: or https:");
    } catch (err) {
      return refuse(403, `VAPID JWT: ${(err as Error).message}`);
    }
    const header = (name: string) => {
      const value = req.headers[name];
      return Array.isArray(value) ? value.join(",") : value;
    };
    if (!/^\d+$/.test(header("ttl") ?? "")) return refuse(400, "no TTL");
    const urgency = header("urgency");
    if (urgency !== undefined && !["very-low", "low", "normal", "high"].includes(urgency)) {
      return refuse(400, "bad Urgency");
    }
    const topic = header("topic");
    if (topic !== undefined && !/^[A-Za-z0-9_-]{1,32}$/.test(topic)) return refuse(400, "bad Topic");
    if (req.headers["content-encoding"] !== "aes128gcm") return refuse(415, "not aes128gcm");
    if (body.length > 4096) return refuse(413, "payload too large");
    let payload: Record<string, string | number>;
    try {
      payload = JSON.parse(decryptWebPush(body, subscription).toString("utf8")) as Record<
        string,
        string | number
      >;
    } catch (err) {
      return refuse(400, `does not decrypt: ${(err as Error).message}`);
    }
    const answer = this.script.answer(subscription.id, { status: 201 });
    if (answer.status === 201)
      this.delivered.push({ subscriptionId: subscription.id, headers: req.headers, payload });
    reply(answer);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
