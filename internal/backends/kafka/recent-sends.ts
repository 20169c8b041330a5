/**
 * What one drafts partition's owner sequenced since its claim, so that most drafts need no dedupe
 * lookup in the store (ADR 0002, "Dedupe lookups").
 *
 * A draft's key (sender, client_msg_id) must be checked against every earlier draft with that key.
 * The owner reads its partition in order from where its claim began, so the earlier drafts it did not
 * see itself are those it never remembered (before its claim, or forgotten since: evicted, or in a
 * batch whose writes failed). `unseenBeforeMs` bounds their stamps (a draft's `createdAtMs`, taken
 * before it was appended; or this owner's clock when it forgot them).
 *
 * A draft its client called a first attempt (client protocol `Send.first_attempt`) carries the time
 * its gateway received the frame. Any other draft with its key is a resend, received after the client
 * gave up on the first attempt's connection, or a copy of the same draft. The first attempt's frame
 * may still be received after that, but no later than the gateway closes the connection for not
 * answering its pings. So a first attempt received at `t` has no unseen twin if
 * `t >= unseenBeforeMs + marginMs`, where the margin covers that lateness and the clock skew between
 * the processes; any other draft is looked up in the store unless remembered here.
 */
import type { SequencedRef } from "../types.js";

/** The clock skew allowed between the platform's processes (NTP keeps it to milliseconds). */
export const CLOCK_SKEW_MAX_MS = 5_000;

/**
 * The margin for gateways that ping every `pingIntervalMs`: they close a connection that did not
 * answer one ping by the next, so no frame is received later than two intervals after its client
 * went silent; plus the skew between the gateway's clock and the owner's, and the stamps' clocks.
 */
export const firstAttemptMarginMs = (pingIntervalMs: number): number =>
  2 * pingIntervalMs + 2 * CLOCK_SKEW_MAX_MS;

export class RecentSends {
  /** By conversation and dedupe key, in the order remembered (oldest first). */
  private readonly refs = new Map<string, { ref: SequencedRef; stampMs: number }>();
  private unseenBeforeMs: number;

  constructor(
    claimedAtMs: number,
    private readonly marginMs: number,
    private readonly entriesMax: number,
  ) {
    this.unseenBeforeMs = claimedAtMs;
  }

  /** The seq and message a key got, if this owner assigned or found it since its claim. */
  get(conversationId: string, dedupeKey: string): SequencedRef | undefined {
    return this.refs.get(`${conversationId}\u0000${dedupeKey}`)?.ref;
  }

  /** Whether a draft this owner does not remember must be looked up in the store. */
  needsLookup(firstAttemptReceivedAtMs: number | undefined): boolean {
    return (
      firstAttemptReceivedAtMs === undefined || firstAttemptReceivedAtMs < this.unseenBeforeMs + this.marginMs
    );
  }

  /** A draft's outcome, once its batch is durable and still this owner's. */
  remember(conversationId: string, dedupeKey: string, ref: SequencedRef, stampMs: number): void {
    const key = `${conversationId}\u0000${dedupeKey}`;
    this.refs.delete(key);
    this.refs.set(key, { ref, stampMs });
    if (this.refs.size <= this.entriesMax) return;
    const [oldest, entry] = this.refs.entries().next().value as [string, { stampMs: number }];
    this.refs.delete(oldest);
    this.unseenBeforeMs = Math.max(this.unseenBeforeMs, entry.stampMs + 1);
  }

  /** A batch's writes failed (their outcome is unknown): what was received until now is looked up. */
  forgetUntil(nowMs: number): void {
    this.unseenBeforeMs = Math.max(this.unseenBeforeMs, nowMs);
  }
}
