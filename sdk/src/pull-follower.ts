/**
 * Follows pull conversations (large groups, docs/protocol.md "Delivery models") by seq: their
 * messages are in no inbox, so the cursor cannot tell what this device missed. The follower remembers
 * the newest seq the app was given per conversation (of either model, so a group that switches from
 * push to pull continues where its inbox entries ended) and:
 *
 * - emits a live pull message in seq order: a gap before it (messages this device missed while it was
 *   reconnecting, or that were dropped on the way) is fetched with `history` first;
 * - after each sync, fetches what the listed pull conversations hold past the remembered seq.
 *
 * A pull conversation this device never saw a message of is not fetched (it may hold 100,000 messages):
 * its position starts at its last seq, and the app pages its history when the user opens it.
 * Per conversation, one fetch runs at a time and live messages wait behind it.
 */
import type { ChatMessage, Conversation, HistoryPage } from "./types.js";

export interface PullFollowerOptions {
  /** One page of a conversation's history after `afterSeq`, oldest first. */
  fetch(conversationId: string, afterSeq: number): Promise<HistoryPage>;
  /** Hands a message to the app (the client's dedupe runs there). */
  emit(message: ChatMessage, source: "sync" | "live"): void;
  /** Conversations remembered at most; the least recently seen go first. */
  capacity: number;
  /** Positions carried over from an earlier session (see `positions`). */
  initial?: Record<string, number>;
  /** Whether a failed gap fetch is still worth retrying (false once the client is closed). */
  active?: () => boolean;
  /** Delays of the retries of a failed gap fetch (default GAP_RETRY_DELAYS_MS). */
  retryDelaysMs?: readonly number[];
}

/**
 * A live message whose gap could not be fetched (a `history` that failed on a connection that stays
 * up) is not shown; the gap and the message are fetched again after these delays, so that they do
 * not wait for the conversation's next message or the next reconnect.
 */
export const GAP_RETRY_DELAYS_MS: readonly number[] = [1_000, 5_000, 15_000];

export class PullFollower {
  private readonly seqs = new Map<string, number>();
  /** Conversations known to be on pull (from listings and live pull messages). */
  private readonly pull = new Set<string>();
  /**
   * A group's message was seen: any group may switch to pull while this device is away (and hear
   * nothing of it), so every sync is followed by a listing from then on. Direct conversations never
   * switch.
   */
  private groupSeen = false;
  private readonly queues = new Map<string, Promise<void>>();

  constructor(private readonly o: PullFollowerOptions) {
    for (const [c, seq] of Object.entries(o.initial ?? {})) {
      this.remember(c, seq);
      this.pull.add(c);
    }
  }

  /** Whether a catch-up after a sync is worth a request: a pull conversation is followed, or may be. */
  get following(): boolean {
    return this.pull.size > 0 || this.groupSeen;
  }

  /** The app listed its conversations: the pull ones are followed from now on. */
  learn(conversations: Conversation[]): void {
    for (const c of conversations) {
      if (c.delivery !== "pull") continue;
      this.pull.add(c.id);
      if (!this.seqs.has(c.id)) this.remember(c.id, c.lastSeq);
    }
  }

  /**
   * A `conversation` event said the group is on pull: followed from now on. Its position stays what
   * this device saw (an event's `lastSeq` is 0: a device new to the group starts at the `lastSeq` of
   * the next listing, not at the beginning of its history).
   */
  follow(conversationId: string): void {
    this.pull.add(conversationId);
  }

  /** A message the app got from the inbox: its conversation's position moves up to it. */
  note(message: ChatMessage): void {
    if (!this.groupSeen && message.conversationId.startsWith("g:")) this.groupSeen = true;
    if (message.seq > (this.seqs.get(message.conversationId) ?? 0))
      this.remember(message.conversationId, message.seq);
  }

  /** A live message of a pull conversation (cursor 0). */
  live(message: ChatMessage): Promise<void> {
    this.pull.add(message.conversationId);
    return this.serial(message.conversationId, async () => {
      const known = this.seqs.get(message.conversationId);
      if (known !== undefined && message.seq <= known) return; // seen already
      if (known !== undefined && message.seq > known + 1) {
        try {
          await this.fetchAfter(message.conversationId, known, message.seq - 1);
        } catch (err) {
          this.retryGap(message.conversationId, message.seq, 0);
          throw err;
        }
      }
      this.o.emit(message, "live");
      this.note(message);
    });
  }

  /** Fetches what the conversation holds up to `upTo` past the position, later (see GAP_RETRY_DELAYS_MS). */
  private retryGap(conversationId: string, upTo: number, attempt: number): void {
    const delays = this.o.retryDelaysMs ?? GAP_RETRY_DELAYS_MS;
    if (attempt >= delays.length) return;
    setTimeout(() => {
      if (this.o.active && !this.o.active()) return;
      this.serial(conversationId, async () => {
        const known = this.seqs.get(conversationId);
        if (known === undefined || upTo <= known) return; // caught up meanwhile
        await this.fetchAfter(conversationId, known, upTo);
      }).catch(() => this.retryGap(conversationId, upTo, attempt + 1));
    }, delays[attempt]);
  }

  /** After a sync: each pull conversation's messages past the remembered position. */
  async catchUp(conversations: Conversation[]): Promise<void> {
    for (const c of conversations) if (c.delivery === "pull") this.pull.add(c.id);
    await Promise.all(
      conversations
        .filter((c) => c.delivery === "pull")
        .map((c) =>
          this.serial(c.id, async () => {
            const known = this.seqs.get(c.id);
            if (known === undefined) this.remember(c.id, c.lastSeq);
            else if (c.lastSeq > known) await this.fetchAfter(c.id, known, c.lastSeq);
          }),
        ),
    );
  }

  /** The newest seq given to the app per conversation: persist it and pass it back as `initial`. */
  positions(): Record<string, number> {
    return Object.fromEntries(this.seqs);
  }

  /** Emits the conversation's messages after `afterSeq` up to `upTo`, page by page, in order. */
  private async fetchAfter(conversationId: string, afterSeq: number, upTo: number): Promise<void> {
    let from = afterSeq;
    while (from < upTo) {
      const page = await this.o.fetch(conversationId, from);
      for (const m of page.messages) {
        if (m.seq > upTo) return;
        this.o.emit(m, "sync");
        this.note(m);
        from = m.seq;
      }
      if (!page.hasMore || page.messages.length === 0) return;
    }
  }

  private serial(conversationId: string, task: () => Promise<void>): Promise<void> {
    const previous = this.queues.get(conversationId) ?? Promise.resolve();
    const next = previous.then(task, task);
    this.queues.set(conversationId, next);
    const done = () => {
      if (this.queues.get(conversationId) === next) this.queues.delete(conversationId);
    };
    next.then(done, done);
    return next;
  }

  private remember(conversationId: string, seq: number): void {
    this.seqs.delete(conversationId);
    this.seqs.set(conversationId, seq);
    if (this.seqs.size > this.o.capacity) this.seqs.delete(this.seqs.keys().next().value as string);
  }
}
