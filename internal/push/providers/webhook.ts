/**
 * The generic webhook: a JSON POST per notification to the device's own URL (provider webhook) or to
 * push.webhookUrl. With a signing secret every request carries X-Switchboard-Timestamp and
 * X-Switchboard-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">; receivers reject a timestamp
 * outside their replay window (documented: 300 s) and drop a repeated notification_id inside it.
 */
import { createHmac } from "node:crypto";
import { activeCarrier, tracing } from "../../lib/tracing.js";
import {
  type DeliveryOutcome,
  networkRetry,
  type PushNotification,
  type PushProvider,
  parseRetryAfter,
  unreadCountOf,
} from "./types.js";

export const WEBHOOK_REPLAY_WINDOW_SECONDS = 300;
export const WEBHOOK_TIMESTAMP_HEADER = "x-switchboard-timestamp";
export const WEBHOOK_SIGNATURE_HEADER = "x-switchboard-signature";

export interface WebhookOptions {
  /** HMAC key; empty: requests are not signed. */
  signingSecret: string;
  timeoutMs?: number;
  fetchImpl?: typeof fetch;
  nowMs?: () => number;
}

/** The signature header value for a body sent at `timestampSeconds` (receivers recompute it). */
export function webhookSignature(secret: string, timestampSeconds: number, body: string): string {
  const mac = createHmac("sha256", secret).update(`${timestampSeconds}.${body}`).digest("hex");
  return `v1=${mac}`;
}

export class WebhookProvider implements PushProvider {
  readonly name = "webhook" as const;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly nowMs: () => number;

  constructor(private readonly options: WebhookOptions) {
    this.fetchImpl = options.fetchImpl ?? fetch;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.nowMs = options.nowMs ?? Date.now;
  }

  async send(url: string, n: PushNotification): Promise<DeliveryOutcome> {
    if (!URL.canParse(url)) return { kind: "prune", reason: "webhook: the device's token is not a URL" };
    const body = JSON.stringify({
      notification_id: n.id,
      user_id: n.userId,
      conversation_id: n.conversationId,
      title: n.title,
      body: n.body,
      message_count: n.messageCount,
      unread_count: unreadCountOf(n),
    });
    const headers: Record<string, string> = {
      "content-type": "application/json",
      // W3C trace context, so the receiving service can join the message's trace.
      ...(tracing.on ? activeCarrier() : undefined),
    };
    if (this.options.signingSecret) {
      const timestamp = Math.floor(this.nowMs() / 1000);
      headers[WEBHOOK_TIMESTAMP_HEADER] = String(timestamp);
      headers[WEBHOOK_SIGNATURE_HEADER] = webhookSignature(this.options.signingSecret, timestamp, body);
    }
    let res: Response;
    try {
      res = await this.fetchImpl(url, {
        method: "POST",
        headers,
        body,
        // A 3xx is an answer, not somewhere else to send the notification (a failure, below).
        redirect: "manual",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      await res.body?.cancel();
    } catch (err) {
      return networkRetry("webhook", err);
    }
    if (res.ok) return { kind: "delivered" };
    const reason = `webhook answered ${res.status}`;
    if (res.status === 404 || res.status === 410) return { kind: "prune", reason };
    if (res.status === 429 || res.status >= 500) {
      return { kind: "retry", reason, afterMs: parseRetryAfter(res.headers.get("retry-after")) };
    }
    return { kind: "failed", reason };
  }

  async close(): Promise<void> {}
}
