/**
 * What one drafts partition's owner sequenced since its claim, so that most drafts need no dedupe
 * lookup in the store (ADR 0002, "Dedupe lookups").
 *
 * A draft's key (sender, client_msg_id) must be checked against every earlier draft with that key.
 * The owner reads its partition in order from where its claim began, so the earlier drafts it did not
 * see itself are those it never remembered (before its claim, or forgotten since: evicted, or in a
 * batch whose writes failed). `unseenBeforeMs` bounds their stamps: a draft's `createdAtMs` is taken
 * before it is appended, so one appended before the claim is stamped before it; an evicted one by
 * its own stamp; and a failed batch's before the owner noticed the failure.
 *
 * A draft its client called a first attempt (client protocol `Send.first_attempt`) carries a time
 * before which no other draft with its key was received (`resendsAfterMs`). Its gateway computes it:
 * any other draft with the key is a resend, which the client transmits after this frame (on the same
 * connection, received after it; on another, once the client gave up on this one), or a copy of the
 * same draft; and the gateway closes a connection that did not answer one ping by the next, so the
 * frame was received at most two ping intervals after the client stopped reading it. So a first
 * attempt with `resendsAfterMs >= unseenBeforeMs + marginMs` has no twin that the owner did not
 * see. The margin is one budget for the clock skew between the processes and for a gateway's
 * event-loop stall that delays its ping check past a frame that arrived meanwhile (NTP keeps the
 * skew near zero). A bound ahead of the owner's own clock comes from a clock out of that budget:
 * looked up.
 *
 * Remembered keys also answer repeats without the store, until the dedupe window has passed since
 * the key was first sequenced (then a resend is a new message, as the store's expired row says).
 */
import type { SequencedRef } from "../types.js";

/** The clock skew allowed between the platform's processes (NTP keeps it to milliseconds). */
export const CLOCK_SKEW_MAX_MS = 5_000;

/** Twice the skew: between the stamp of an unseen draft, the owner's clock, and the gateway's. */
export const FIRST_ATTEMPT_MARGIN_MS = 2 * CLOCK_SKEW_MAX_MS;

export interface RecentSendsOptions {
  /** When the owner claimed the partition (its clock). */
  claimedAtMs: number;
  marginMs: number;
  entriesMax: number;
  /** The dedupe window: a key is not answered from memory once this long has passed since its stamp. */
  windowMs: number;
}

export class RecentSends {
  /** By conversation and dedupe key, in the order remembered (oldest first). */
  private readonly refs = new Map<string, { ref: SequencedRef; stampMs: number }>();
  private unseenBeforeMs: number;

  constructor(private readonly o: RecentSendsOptions) {
    this.unseenBeforeMs = o.claimedAtMs;
  }

  /** The seq and message a key got, if this owner assigned or found it since its claim. */
  get(conversationId: string, dedupeKey: string, nowMs = Date.now()): SequencedRef | undefined {
    const entry = this.refs.get(`${conversationId}\u0000${dedupeKey}`);
    return entry && entry.stampMs > nowMs - this.o.windowMs ? entry.ref : undefined;
  }

  /** Whether a draft this owner does not remember must be looked up in the store. */
  needsLookup(resendsAfterMs: number | undefined, nowMs = Date.now()): boolean {
    return (
      resendsAfterMs === undefined ||
      resendsAfterMs < this.unseenBeforeMs + this.o.marginMs ||
      resendsAfterMs > nowMs
    );
  }

  /** A draft's outcome, once its batch is durable. A key remembered before keeps its first stamp. */
  remember(conversationId: string, dedupeKey: string, ref: SequencedRef, stampMs: number): void {
    const key = `${conversationId}\u0000${dedupeKey}`;
    if (this.refs.has(key)) return;
    this.refs.set(key, { ref, stampMs });
    if (this.refs.size <= this.o.entriesMax) return;
    const [oldest, entry] = this.refs.entries().next().value as [string, { stampMs: number }];
    this.refs.delete(oldest);
    this.unseenBeforeMs = Math.max(this.unseenBeforeMs, entry.stampMs + 1);
  }

  /** A batch's writes failed (their outcome is unknown): what was received until now is looked up. */
  forgetUntil(nowMs: number): void {
    this.unseenBeforeMs = Math.max(this.unseenBeforeMs, nowMs);
  }
}
