/**
 * Apple Push Notification service over HTTP/2 with token-based authentication: an ES256 JWT signed
 * with the team's .p8 key (header kid, claims iss = team id and iat). Apple refuses a token older than
 * an hour and throttles one renewed more often than every 20 minutes, so it is renewed after 50 minutes
 * (or at once when APNs answers ExpiredProviderToken). One HTTP/2 session carries every request and is
 * reopened after it closes or fails.
 */
import { type ClientHttp2Session, connect, constants } from "node:http2";
import { importPKCS8, SignJWT } from "jose";
import { apnsCollapseId } from "./collapse.js";
import {
  type DeliveryOutcome,
  networkRetry,
  type PushNotification,
  type PushProvider,
  parseRetryAfter,
  unreadCountOf,
} from "./types.js";

export const APNS_PRODUCTION_ORIGIN = "https://api.push.apple.com";
export const APNS_DEVELOPMENT_ORIGIN = "https://api.sandbox.push.apple.com";
const TOKEN_RENEW_AFTER_MS = 50 * 60 * 1000;
const RESPONSE_BYTES_MAX = 16 * 1024;

export interface ApnsOptions {
  /** The .p8 signing key (PKCS#8 PEM) from the Apple developer account. */
  keyPem: string;
  keyId: string;
  teamId: string;
  /** The app's bundle id (apns-topic). */
  topic: string;
  /** APNS_PRODUCTION_ORIGIN, APNS_DEVELOPMENT_ORIGIN, or a stand-in. */
  origin: string;
  /** Extra CAs to trust (a stand-in's self-signed certificate); undefined: the system's. */
  ca?: string;
  timeoutMs?: number;
  nowMs?: () => number;
}

interface ApnsAnswer {
  status: number;
  reason: string;
  retryAfter: string | undefined;
}

/** 400/403/410 reasons that mean the token itself is dead. */
const DEAD_TOKEN_REASONS = new Set(["BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"]);

export class ApnsProvider implements PushProvider {
  readonly name = "apns" as const;
  private session: ClientHttp2Session | undefined;
  private jwt: { value: string; issuedAtMs: number } | undefined;
  private readonly signingKey: Promise<CryptoKey>;
  private readonly timeoutMs: number;
  private readonly nowMs: () => number;

  constructor(private readonly options: ApnsOptions) {
    this.signingKey = importPKCS8(options.keyPem, "ES256");
    // Surfaced on the first send; not an unhandled rejection before it.
    this.signingKey.catch(() => undefined);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.nowMs = options.nowMs ?? Date.now;
  }

  async send(token: string, n: PushNotification): Promise<DeliveryOutcome> {
    // A device token is hex; anything else would also be a path injection into /3/device/.
    if (!/^[0-9a-fA-F]{1,200}$/.test(token)) return { kind: "prune", reason: "apns: token is not hex" };
    let authorization: string;
    try {
      authorization = `bearer ${await this.providerToken()}`;
    } catch (err) {
      return { kind: "failed", reason: `apns: cannot sign the provider token: ${(err as Error).message}` };
    }
    const payload = JSON.stringify({
      aps: {
        alert: { title: n.title, body: n.body },
        sound: "default",
        "thread-id": n.conversationId,
        "mutable-content": 1,
      },
      conversation_id: n.conversationId,
      notification_id: n.id,
      message_count: n.messageCount,
      unread_count: unreadCountOf(n),
    });
    const headers = {
      [constants.HTTP2_HEADER_METHOD]: "POST",
      [constants.HTTP2_HEADER_PATH]: `/3/device/${token}`,
      authorization,
      "apns-topic": this.options.topic,
      "apns-push-type": "alert",
      "apns-priority": "10",
      "apns-expiration": String(Math.floor(this.nowMs() / 1000) + n.ttlSeconds),
      "apns-collapse-id": apnsCollapseId(n.conversationId),
      "content-type": "application/json",
    };
    let answer: ApnsAnswer;
    try {
      answer = await this.request(headers, payload);
    } catch (err) {
      return networkRetry("apns", err);
    }
    return this.outcome(answer);
  }

  private outcome({ status, reason, retryAfter }: ApnsAnswer): DeliveryOutcome {
    if (status === 200) return { kind: "delivered" };
    const described = `apns answered ${status} ${reason}`.trim();
    if (status === 410 || (status === 400 && DEAD_TOKEN_REASONS.has(reason))) {
      return { kind: "prune", reason: described };
    }
    if (status === 403 && reason === "ExpiredProviderToken") {
      this.jwt = undefined;
      return { kind: "retry", reason: described, afterMs: 0 };
    }
    if (status === 429 || status >= 500) {
      return { kind: "retry", reason: described, afterMs: parseRetryAfter(retryAfter) };
    }
    return { kind: "failed", reason: described };
  }

  private async providerToken(): Promise<string> {
    const now = this.nowMs();
    if (this.jwt && now - this.jwt.issuedAtMs < TOKEN_RENEW_AFTER_MS) return this.jwt.value;
    const value = await new SignJWT({})
      .setProtectedHeader({ alg: "ES256", kid: this.options.keyId })
      .setIssuer(this.options.teamId)
      .setIssuedAt(Math.floor(now / 1000))
      .sign(await this.signingKey);
    this.jwt = { value, issuedAtMs: now };
    return value;
  }

  private connection(): ClientHttp2Session {
    if (this.session && !this.session.closed && !this.session.destroyed) return this.session;
    const session = connect(this.options.origin, this.options.ca ? { ca: this.options.ca } : {});
    // A failed or closing session is dropped; the next send opens a new one. Its streams fail with it.
    const forget = () => {
      if (this.session === session) this.session = undefined;
    };
    session.on("error", forget);
    session.on("goaway", forget);
    session.on("close", forget);
    // An idle session must not keep the process alive.
    session.unref();
    this.session = session;
    return session;
  }

  private request(headers: Record<string, string>, payload: string): Promise<ApnsAnswer> {
    return new Promise((resolve, reject) => {
      const stream = this.connection().request(headers);
      stream.setTimeout(this.timeoutMs, () => {
        stream.close(constants.NGHTTP2_CANCEL);
        reject(new Error(`no answer within ${this.timeoutMs} ms`));
      });
      let status = 0;
      let retryAfter: string | undefined;
      const chunks: Buffer[] = [];
      let bytes = 0;
      stream.on("response", (h) => {
        status = Number(h[constants.HTTP2_HEADER_STATUS]);
        const value = h["retry-after"];
        retryAfter = Array.isArray(value) ? value[0] : value;
      });
      stream.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes <= RESPONSE_BYTES_MAX) chunks.push(chunk);
      });
      stream.on("error", reject);
      stream.on("end", () => {
        let reason = "";
        if (chunks.length > 0) {
          try {
            reason = String(
              (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { reason?: unknown }).reason ?? "",
            );
          } catch {
            reason = "(unreadable body)";
          }
        }
        resolve({ status, reason, retryAfter });
      });
      stream.end(payload);
    });
  }

  async close(): Promise<void> {
    const session = this.session;
    this.session = undefined;
    if (!session || session.closed) return;
    await new Promise<void>((resolve) => session.close(() => resolve()));
  }
}
