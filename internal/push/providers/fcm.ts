/**
 * Firebase Cloud Messaging HTTP v1. Authentication is a service account's OAuth2 JWT-bearer grant
 * (RFC 7523): an RS256 assertion (iss = client_email, scope firebase.messaging, aud = token_uri)
 * exchanged at the key file's token_uri for an access token, cached until a minute before it expires
 * and renewed at once when FCM answers 401. One `messages:send` per device token, with Android, APNs
 * and Web Push overrides carrying the collapse key, expiry and priority.
 */
import { importPKCS8, SignJWT } from "jose";
import { apnsCollapseId, webPushTopic } from "./collapse.js";
import {
  type DeliveryOutcome,
  networkRetry,
  type PushNotification,
  type PushProvider,
  parseRetryAfter,
  unreadCountOf,
} from "./types.js";

export const FCM_ORIGIN = "https://fcm.googleapis.com";
export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_LIFETIME_SECONDS = 3600;
const RENEW_BEFORE_EXPIRY_MS = 60_000;

/** The fields of a Google service-account key file that the grant needs. */
export interface ServiceAccountKey {
  client_email: string;
  private_key: string;
  token_uri: string;
  project_id: string;
}

export interface FcmOptions {
  serviceAccount: ServiceAccountKey;
  /** FCM_ORIGIN or a stand-in. */
  origin: string;
  timeoutMs?: number;
  fetchImpl?: typeof fetch;
  nowMs?: () => number;
}

/** Reads and checks a service-account key file's JSON; errors name the missing field. */
export function parseServiceAccount(json: string, source: string): ServiceAccountKey {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(json) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${source}: not JSON: ${(err as Error).message}`);
  }
  for (const field of ["client_email", "private_key", "token_uri", "project_id"] as const) {
    if (typeof parsed[field] !== "string" || parsed[field] === "") {
      throw new Error(`${source}: a service-account key needs "${field}"`);
    }
  }
  return parsed as unknown as ServiceAccountKey;
}

interface FcmErrorBody {
  error?: {
    status?: string;
    message?: string;
    details?: { "@type"?: string; errorCode?: string; fieldViolations?: { field?: string }[] }[];
  };
}

class TokenEndpointError extends Error {
  constructor(
    message: string,
    readonly transient: boolean,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export class FcmProvider implements PushProvider {
  readonly name = "fcm" as const;
  private accessToken: { value: string; renewAtMs: number } | undefined;
  private pendingGrant: Promise<string> | undefined;
  private readonly signingKey: Promise<CryptoKey>;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly nowMs: () => number;

  constructor(private readonly options: FcmOptions) {
    this.signingKey = importPKCS8(options.serviceAccount.private_key, "RS256");
    this.signingKey.catch(() => undefined); // surfaced on the first send
    this.fetchImpl = options.fetchImpl ?? fetch;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.nowMs = options.nowMs ?? Date.now;
  }

  async send(token: string, n: PushNotification): Promise<DeliveryOutcome> {
    let bearer: string;
    try {
      bearer = await this.bearer();
    } catch (err) {
      if (err instanceof TokenEndpointError && err.transient) {
        return { kind: "retry", reason: err.message, afterMs: err.retryAfterMs };
      }
      return { kind: "failed", reason: `fcm: no access token: ${(err as Error).message}` };
    }
    const url = `${this.options.origin}/v1/projects/${encodeURIComponent(this.options.serviceAccount.project_id)}/messages:send`;
    let res: Response;
    let text: string;
    try {
      res = await this.fetchImpl(url, {
        method: "POST",
        headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
        body: JSON.stringify({ message: this.message(token, n) }),
        redirect: "manual", // no push request follows a redirect (a 3xx fails)
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      text = await res.text();
    } catch (err) {
      return networkRetry("fcm", err);
    }
    return this.outcome(res, text);
  }

  private message(token: string, n: PushNotification): Record<string, unknown> {
    const expiresAtSeconds = Math.floor(this.nowMs() / 1000) + n.ttlSeconds;
    return {
      token,
      notification: { title: n.title, body: n.body },
      data: {
        conversation_id: n.conversationId,
        notification_id: n.id,
        message_count: String(n.messageCount),
        unread_count: String(unreadCountOf(n)),
      },
      android: {
        collapse_key: n.conversationId,
        priority: "HIGH",
        ttl: `${n.ttlSeconds}s`,
        notification: { tag: n.conversationId },
      },
      apns: {
        headers: {
          "apns-collapse-id": apnsCollapseId(n.conversationId),
          "apns-expiration": String(expiresAtSeconds),
          "apns-priority": "10",
        },
        payload: { aps: { "thread-id": n.conversationId, sound: "default" } },
      },
      webpush: {
        headers: { TTL: String(n.ttlSeconds), Urgency: "high", Topic: webPushTopic(n.conversationId) },
      },
    };
  }

  private outcome(res: Response, text: string): DeliveryOutcome {
    if (res.ok) return { kind: "delivered" };
    let body: FcmErrorBody = {};
    try {
      body = JSON.parse(text) as FcmErrorBody;
    } catch {
      // Not JSON (a proxy's page): decided by the status alone.
    }
    const details = body.error?.details ?? [];
    const errorCode = details.find((d) => d.errorCode)?.errorCode ?? body.error?.status ?? "";
    const detail = body.error?.message ? `: ${body.error.message}` : "";
    const reason = `fcm answered ${res.status} ${errorCode}`.trim() + detail;
    const namesToken = details.some((d) => d.fieldViolations?.some((v) => v.field === "message.token"));
    if (errorCode === "UNREGISTERED" || errorCode === "SENDER_ID_MISMATCH") return { kind: "prune", reason };
    if (errorCode === "INVALID_ARGUMENT" && namesToken) return { kind: "prune", reason };
    if (res.status === 401) {
      this.accessToken = undefined;
      return { kind: "retry", reason, afterMs: 0 };
    }
    if (res.status === 429 || res.status >= 500) {
      return { kind: "retry", reason, afterMs: parseRetryAfter(res.headers.get("retry-after")) };
    }
    return { kind: "failed", reason };
  }

  /** The cached access token, or one fresh grant shared by every concurrent caller. */
  private bearer(): Promise<string> {
    if (this.accessToken && this.nowMs() < this.accessToken.renewAtMs) {
      return Promise.resolve(this.accessToken.value);
    }
    this.pendingGrant ??= this.grant().finally(() => {
      this.pendingGrant = undefined;
    });
    return this.pendingGrant;
  }

  private async grant(): Promise<string> {
    const account = this.options.serviceAccount;
    const nowSeconds = Math.floor(this.nowMs() / 1000);
    const assertion = await new SignJWT({ scope: FCM_SCOPE })
      .setProtectedHeader({ alg: "RS256", typ: "JWT" })
      .setIssuer(account.client_email)
      .setAudience(account.token_uri)
      .setIssuedAt(nowSeconds)
      .setExpirationTime(nowSeconds + ASSERTION_LIFETIME_SECONDS)
      .sign(await this.signingKey);
    let res: Response;
    let text: string;
    try {
      res = await this.fetchImpl(account.token_uri, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }).toString(),
        redirect: "manual",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      text = await res.text();
    } catch (err) {
      throw new TokenEndpointError(`fcm: token endpoint: ${(err as Error).message}`, true);
    }
    if (!res.ok) {
      const transient = res.status === 429 || res.status >= 500;
      throw new TokenEndpointError(
        `fcm: token endpoint answered ${res.status}: ${text.slice(0, 200)}`,
        transient,
        transient ? parseRetryAfter(res.headers.get("retry-after")) : undefined,
      );
    }
    const parsed = JSON.parse(text) as { access_token?: unknown; expires_in?: unknown };
    if (typeof parsed.access_token !== "string" || typeof parsed.expires_in !== "number") {
      throw new TokenEndpointError("fcm: token endpoint answered without access_token/expires_in", false);
    }
    this.accessToken = {
      value: parsed.access_token,
      renewAtMs: this.nowMs() + parsed.expires_in * 1000 - RENEW_BEFORE_EXPIRY_MS,
    };
    return parsed.access_token;
  }

  async close(): Promise<void> {}
}
