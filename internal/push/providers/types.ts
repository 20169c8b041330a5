/**
 * The one interface every push provider implements (docs/adr/0008). A provider owns its protocol only:
 * authentication, the request, and the mapping of the answer to an outcome. Retries, pruning and
 * metrics belong to the push service, so a provider never throws for something a provider answered.
 */

import type { DeviceRecord } from "../../backends/types.js";
import { BlockedAddressError } from "../outbound-guard.js";

/** What a provider needs to build its request; the body is already privacy-filtered. */
export interface PushNotification {
  /** Unique per notification: webhook receivers use it to drop a replay. */
  id: string;
  userId: string;
  conversationId: string;
  title: string;
  body: string;
  /** Seconds the provider may hold the notification for an unreachable device. */
  ttlSeconds: number;
  /** Messages this notification stands for: 1, or a burst's summary (internal/push/collapse-windows). */
  messageCount: number;
  /**
   * The user's unread messages in the conversation when it was queued: those after the user's read
   * watermark up to the notified message (at least messageCount). Absent in jobs stored by an older
   * version: messageCount stands in.
   */
  unreadCount?: number;
}

/** What the payloads carry as `unread_count`. */
export const unreadCountOf = (n: PushNotification): number => n.unreadCount ?? n.messageCount;

export type DeliveryOutcome =
  | { kind: "delivered" }
  /** Transient: try again, after `afterMs` when the provider said when (Retry-After). */
  | { kind: "retry"; reason: string; afterMs?: number | undefined }
  /** The token is dead (unregistered, malformed, for another app): remove the device. */
  | { kind: "prune"; reason: string }
  /** Permanent for this notification (bad request, refused credentials): do not retry. */
  | { kind: "failed"; reason: string };

export interface PushProvider {
  readonly name: DeviceRecord["provider"];
  send(token: string, notification: PushNotification): Promise<DeliveryOutcome>;
  close(): Promise<void>;
}

const RETRY_AFTER_DATE_MAX_MS = 24 * 3600 * 1000;

/**
 * A Retry-After header (RFC 9110: delay-seconds or an HTTP date) in milliseconds from now; undefined
 * when absent or unreadable, so the caller falls back to its own backoff.
 */
export function parseRetryAfter(value: string | null | undefined, nowMs = Date.now()): number | undefined {
  if (value === null || value === undefined || value.trim() === "") return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - nowMs), RETRY_AFTER_DATE_MAX_MS);
}

/** A network failure or timeout: always worth another try. */
export function networkRetry(provider: string, err: unknown): DeliveryOutcome {
  // A user's URL that points inside the network (outbound-guard.ts) never becomes deliverable.
  if (err instanceof BlockedAddressError) return { kind: "prune", reason: `${provider}: ${err.message}` };
  const message = err instanceof Error ? err.message : String(err);
  return { kind: "retry", reason: `${provider}: request failed: ${message}` };
}
