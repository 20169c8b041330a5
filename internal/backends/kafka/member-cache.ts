/**
 * The sequencer's cache of member lists (with their seq bounds, seq-audience.ts), so that a message
 * costs no membership read.
 *
 * It is kept true by the log itself: every membership change is announced as a record in the drafts
 * topic, keyed by conversation, after the change is stored and before the change is acknowledged
 * (`KafkaMessageLog.announceMembershipChange`). The owner of the conversation's partition reads it in
 * order with the messages, so a message sent after a leave was acknowledged is addressed without the
 * member who left. The cache is cleared whenever the owner's partitions change (another owner may
 * have read announcements meanwhile), and an entry older than `ttlMs` is read again: so a change whose
 * announcement was never made (its process died between the change and it) is seen, and counts for
 * the messages created `UNANNOUNCED_AFTER_MS` after it (seq-audience.ts).
 * Bounded: the least recently used conversation goes first.
 *
 * A pull conversation (ADR 0010) is cached as "pull": its messages name no recipients.
 */
import { dropOldest } from "../../lib/drop-oldest.js";
import type { SeqAudience } from "./seq-audience.js";

export interface MemberCacheOptions {
  entriesMax: number;
  ttlMs: number;
  now?: () => number;
}

/** Whom a conversation's messages are addressed to: its members as of each seq, or nobody by name ("pull"). */
export type Audience = SeqAudience | "pull";

export class MemberCache {
  private readonly entries = new Map<string, { members: Audience; loadedAtMs: number }>();
  private readonly now: () => number;

  constructor(private readonly o: MemberCacheOptions) {
    this.now = o.now ?? Date.now;
  }

  get(conversationId: string): Audience | undefined {
    const entry = this.entries.get(conversationId);
    if (!entry) return undefined;
    if (this.now() - entry.loadedAtMs > this.o.ttlMs) {
      this.entries.delete(conversationId);
      return undefined;
    }
    // Map order is insertion order: re-inserting marks it most recently used.
    this.entries.delete(conversationId);
    this.entries.set(conversationId, entry);
    return entry.members;
  }

  /** `loadedAtMs`: when the read started (a change announced after it must not be masked). */
  set(conversationId: string, members: Audience, loadedAtMs: number): void {
    this.entries.delete(conversationId);
    this.entries.set(conversationId, { members, loadedAtMs });
    while (this.entries.size > this.o.entriesMax) dropOldest(this.entries);
  }

  forget(conversationId: string): void {
    this.entries.delete(conversationId);
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
