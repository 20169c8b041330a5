/**
 * Web Push (RFC 8030) with RFC 8291 payload encryption and RFC 8292 VAPID. The device token is the
 * browser's PushSubscription JSON ({endpoint, keys: {p256dh, auth}}). The VAPID JWT (ES256, aud = the
 * push service's origin, sub = a contact) is cached per origin for 12 hours of its 24-hour maximum.
 */
import { createHash, ECDH } from "node:crypto";
import { importJWK, SignJWT } from "jose";
import { webPushTopic } from "./collapse.js";
import {
  type DeliveryOutcome,
  networkRetry,
  type PushNotification,
  type PushProvider,
  parseRetryAfter,
  unreadCountOf,
} from "./types.js";
import {
  encryptWebPushPayload,
  type SubscriptionKeys,
  WEB_PUSH_PLAINTEXT_BYTES_MAX,
} from "./web-push-encryption.js";

const VAPID_JWT_LIFETIME_SECONDS = 12 * 3600;
const VAPID_RENEW_BEFORE_EXPIRY_MS = 3600 * 1000;
const VAPID_CACHE_ENTRIES_MAX = 256;

export interface WebPushOptions {
  /** The application server key browsers subscribe with: uncompressed P-256 point, base64url. */
  vapidPublicKey: string;
  /** Its private scalar d, base64url (the format `web-push generate-vapid-keys` prints). */
  vapidPrivateKey: string;
  /** Contact for the push service operator: a mailto: or https: URL. */
  subject: string;
  /** Tests only: accept http: endpoints (a browser's are always https:). */
  allowHttpEndpoints?: boolean;
  timeoutMs?: number;
  fetchImpl?: typeof fetch;
  nowMs?: () => number;
}

interface Subscription {
  endpoint: URL;
  keys: SubscriptionKeys;
}

/** The subscription in a device token, or a reason it is unusable (the token is then pruned). */
export function parseSubscription(token: string, allowHttp: boolean): Subscription | string {
  let parsed: { endpoint?: unknown; keys?: { p256dh?: unknown; auth?: unknown } };
  try {
    parsed = JSON.parse(token) as typeof parsed;
  } catch {
    return "the token is not subscription JSON";
  }
  if (typeof parsed.endpoint !== "string" || !URL.canParse(parsed.endpoint)) return "no endpoint URL";
  const endpoint = new URL(parsed.endpoint);
  if (endpoint.protocol !== "https:" && !(allowHttp && endpoint.protocol === "http:")) {
    return "the endpoint is not https";
  }
  const { p256dh, auth } = parsed.keys ?? {};
  if (typeof p256dh !== "string" || typeof auth !== "string") return "no keys.p256dh / keys.auth";
  // Buffer.from(…, "base64url") would take standard base64 too, and skip what is neither.
  if (!BASE64URL.test(p256dh) || !BASE64URL.test(auth)) return "keys.p256dh / keys.auth are not base64url";
  const keys = { p256dh: Buffer.from(p256dh, "base64url"), auth: Buffer.from(auth, "base64url") };
  if (keys.p256dh.length !== 65 || keys.p256dh[0] !== 0x04 || !onP256(keys.p256dh))
    return "keys.p256dh is not a P-256 point";
  if (keys.auth.length !== 16) return "keys.auth is not 16 bytes";
  return { endpoint, keys };
}

/** base64url's alphabet, its padding optional (PushSubscription.toJSON() writes none). */
const BASE64URL = /^[A-Za-z0-9_-]*={0,2}$/;

/**
 * Whether an uncompressed point lies on P-256: one that does not would be accepted at registration
 * and fail only at its first notification's encryption (RFC 8291's ECDH).
 */
function onP256(point: Buffer): boolean {
  try {
    ECDH.convertKey(point, "prime256v1", undefined, undefined, "uncompressed");
    return true;
  } catch {
    return false;
  }
}

export class WebPushProvider implements PushProvider {
  readonly name = "webpush" as const;
  private readonly signingKey: Promise<CryptoKey | Uint8Array>;
  private readonly vapidJwts = new Map<string, { value: string; renewAtMs: number }>();
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly nowMs: () => number;

  constructor(private readonly options: WebPushOptions) {
    const publicKey = Buffer.from(options.vapidPublicKey, "base64url");
    if (publicKey.length !== 65 || publicKey[0] !== 0x04) {
      throw new Error("push.webpush: the VAPID public key is not an uncompressed P-256 point (base64url)");
    }
    this.signingKey = importJWK(
      {
        kty: "EC",
        crv: "P-256",
        x: publicKey.subarray(1, 33).toString("base64url"),
        y: publicKey.subarray(33, 65).toString("base64url"),
        d: options.vapidPrivateKey,
      },
      "ES256",
    );
    this.signingKey.catch(() => undefined); // surfaced on the first send
    this.fetchImpl = options.fetchImpl ?? fetch;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.nowMs = options.nowMs ?? Date.now;
  }

  async send(token: string, n: PushNotification): Promise<DeliveryOutcome> {
    const subscription = parseSubscription(token, this.options.allowHttpEndpoints ?? false);
    if (typeof subscription === "string") return { kind: "prune", reason: `webpush: ${subscription}` };
    const plaintext = Buffer.from(
      JSON.stringify({
        title: n.title,
        body: n.body,
        conversation_id: n.conversationId,
        notification_id: n.id,
        message_count: n.messageCount,
        unread_count: unreadCountOf(n),
      }),
    );
    if (plaintext.length > WEB_PUSH_PLAINTEXT_BYTES_MAX) {
      return { kind: "failed", reason: `webpush: payload of ${plaintext.length} bytes is too large` };
    }
    let vapid: string;
    try {
      vapid = await this.vapidJwt(subscription.endpoint.origin);
    } catch (err) {
      return { kind: "failed", reason: `webpush: cannot sign the VAPID JWT: ${(err as Error).message}` };
    }
    let res: Response;
    try {
      res = await this.fetchImpl(subscription.endpoint, {
        method: "POST",
        headers: {
          authorization: `vapid t=${vapid}, k=${this.options.vapidPublicKey}`,
          "content-encoding": "aes128gcm",
          "content-type": "application/octet-stream",
          ttl: String(n.ttlSeconds),
          urgency: "high",
          topic: webPushTopic(n.conversationId),
        },
        body: new Uint8Array(encryptWebPushPayload(plaintext, subscription.keys)),
        // A 3xx is an answer, not somewhere else to send the notification (a failure, below).
        redirect: "manual",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      await res.body?.cancel();
    } catch (err) {
      return networkRetry("webpush", err);
    }
    if (res.ok) return { kind: "delivered" };
    const reason = `webpush: ${subscription.endpoint.origin} answered ${res.status}`;
    if (res.status === 404 || res.status === 410) return { kind: "prune", reason };
    if (res.status === 429 || res.status >= 500) {
      return { kind: "retry", reason, afterMs: parseRetryAfter(res.headers.get("retry-after")) };
    }
    return { kind: "failed", reason };
  }

  private async vapidJwt(audience: string): Promise<string> {
    const now = this.nowMs();
    const cached = this.vapidJwts.get(audience);
    if (cached && now < cached.renewAtMs) return cached.value;
    const expiresAt = Math.floor(now / 1000) + VAPID_JWT_LIFETIME_SECONDS;
    const value = await new SignJWT({})
      .setProtectedHeader({ typ: "JWT", alg: "ES256" })
      .setAudience(audience)
      .setExpirationTime(expiresAt)
      .setSubject(this.options.subject)
      .sign(await this.signingKey);
    // Push services are few (one origin per browser vendor); the bound only guards against odd tokens.
    if (this.vapidJwts.size >= VAPID_CACHE_ENTRIES_MAX) this.vapidJwts.clear();
    this.vapidJwts.set(audience, { value, renewAtMs: expiresAt * 1000 - VAPID_RENEW_BEFORE_EXPIRY_MS });
    return value;
  }

  async close(): Promise<void> {}
}

/** A stable short id of a subscription endpoint, for logs (never the endpoint: it is a capability). */
export function endpointFingerprint(endpoint: string): string {
  return createHash("sha256").update(endpoint).digest("hex").slice(0, 12);
}
