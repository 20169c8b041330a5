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
 * Per conversation, one fetch runs at a time and live messages wait behind it; across conversations
 * a few history requests are in flight at once (the server answers a connection's history requests
 * one by one, and each request's timeout runs from when it was sent, so a catch-up of hundreds at
 * once would time out behind each other). A fetch that fails is reported and tried again with a
 * capped backoff until it succeeds or the client stops: nothing is hidden for good.
 */
import type { ChatMessage, Conversation, HistoryPage } from "./types.js";

type Timer = ReturnType<typeof setTimeout>;

export interface PullFollowerOptions {
  /** One page of a conversation's history after `afterSeq`, oldest first. */
  fetch(conversationId: string, afterSeq: number): Promise<HistoryPage>;
  /** Hands a message to the app (the client's dedupe runs there). */
  emit(message: ChatMessage, source: "sync" | "live"): void;
  /** Conversations remembered at most; the least recently seen go first. */
  capacity: number;
  /** Positions carried over from an earlier session (see `positions`). */
  initial?: Record<string, number>;
  /** Whether a failed fetch is still worth retrying (false once the client is closed). */
  active?: () => boolean;
  /**
   * Delays of the retries of a failed fetch, the last one repeating until it succeeds (default
   * GAP_RETRY_DELAYS_MS); empty: no retry of its own (the next catch-up fetches it).
   */
  retryDelaysMs?: readonly number[];
  /** Whether a fetch that failed with `err` may succeed later (default: any may). */
  retryable?: (err: unknown) => boolean;
  /** A retry, or one conversation of a catch-up, failed (the client reports it as an "error" event). */
  failed?: (err: unknown, conversationId: string) => void;
  /** A position changed (the client's checkpoint with it). */
  changed?: () => void;
  /** Most fetches in flight at once, over all conversations (default CATCH_UP_CONCURRENCY). */
  concurrency?: number;
}

/**
 * A live message whose gap could not be fetched (a `history` that failed on a connection that stays
 * up) is not shown yet; the gap and the message are fetched again after these delays, the last one
 * repeating, so that they do not wait for the conversation's next message or the next reconnect. A
 * conversation whose catch-up failed is fetched again the same way.
 */
export const GAP_RETRY_DELAYS_MS: readonly number[] = [1_000, 5_000, 15_000, 30_000];

/**
 * History requests in flight at once (a catch-up, gaps and their retries together). The server
 * answers one connection's history requests one at a time and each request's timeout runs from when
 * it was sent, so hundreds at once would time out behind each other; a few keep the link busy.
 */
export const CATCH_UP_CONCURRENCY = 4;

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
  /** Fetches to try again, by conversation: up to which seq, and the timer that starts it. */
  private readonly retries = new Map<string, { upTo: number; timer: Timer }>();
  /** Fetches in flight, and those waiting for one of them to end (see CATCH_UP_CONCURRENCY). */
  private fetching = 0;
  private readonly fetchQueue: Array<() => void> = [];

  constructor(private readonly o: PullFollowerOptions) {
    for (const [c, seq] of Object.entries(o.initial ?? {})) {
      // Stored by the app: anything but a seq (a corrupted store) is left out, not followed from.
      if (!Number.isSafeInteger(seq) || seq < 0) continue;
      this.put(c, seq);
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

  /**
   * A live message of a pull conversation (cursor 0). Rejects when the gap before it could not be
   * fetched; the gap and the message are then fetched again later (see GAP_RETRY_DELAYS_MS).
   */
  live(message: ChatMessage): Promise<void> {
    this.pull.add(message.conversationId);
    return this.serial(message.conversationId, async () => {
      const known = this.seqs.get(message.conversationId);
      if (known !== undefined && message.seq <= known) return; // seen already
      if (known !== undefined && message.seq > known + 1) {
        try {
          await this.fetchAfter(message.conversationId, known, message.seq - 1);
        } catch (err) {
          this.retryLater(message.conversationId, message.seq, 0, err);
          throw err;
        }
      }
      this.note(message); // before the app sees it: its checkpoint then includes it
      this.o.emit(message, "live");
    });
  }

  /**
   * Fetches what the conversation holds up to `upTo` past the position, later: after the attempt's
   * delay (see GAP_RETRY_DELAYS_MS), again after each failure, until it is caught up or the client
   * stops. One retry per conversation is pending at a time; a later failure raises its `upTo`.
   */
  private retryLater(conversationId: string, upTo: number, attempt: number, err: unknown): void {
    const delays = this.o.retryDelaysMs ?? GAP_RETRY_DELAYS_MS;
    if (delays.length === 0 || (this.o.active && !this.o.active())) return;
    if (this.o.retryable && !this.o.retryable(err)) return;
    const pending = this.retries.get(conversationId);
    if (pending) {
      pending.upTo = Math.max(pending.upTo, upTo);
      return;
    }
    const retry = {
      upTo,
      timer: setTimeout(
        () => {
          if (this.retries.get(conversationId) === retry) this.retries.delete(conversationId);
          if (this.o.active && !this.o.active()) return;
          const target = retry.upTo;
          this.serial(conversationId, async () => {
            const known = this.seqs.get(conversationId);
            if (known === undefined || target <= known) return; // caught up meanwhile
            await this.fetchAfter(conversationId, known, target);
          }).catch((cause: unknown) => {
            this.o.failed?.(cause, conversationId);
            this.retryLater(conversationId, target, attempt + 1, cause);
          });
        },
        delays[Math.min(attempt, delays.length - 1)],
      ),
    };
    this.retries.set(conversationId, retry);
  }

  /** The client stopped: no retry is left waiting (its timers would keep a Node process alive). */
  stop(): void {
    for (const { timer } of this.retries.values()) clearTimeout(timer);
    this.retries.clear();
  }

  /**
   * After a sync: each pull conversation's messages past the remembered position (a few history
   * requests at a time, CATCH_UP_CONCURRENCY). A conversation whose fetch fails is reported
   * (`failed`) and fetched again later, like a gap.
   */
  async catchUp(conversations: Conversation[]): Promise<void> {
    const pull = conversations.filter((c) => c.delivery === "pull");
    for (const c of pull) this.pull.add(c.id);
    await Promise.all(
      pull.map((c) =>
        this.serial(c.id, async () => {
          const known = this.seqs.get(c.id);
          if (known === undefined) this.remember(c.id, c.lastSeq);
          else if (c.lastSeq > known) await this.fetchAfter(c.id, known, c.lastSeq);
        }).catch((err: unknown) => {
          this.o.failed?.(err, c.id);
          this.retryLater(c.id, c.lastSeq, 0, err);
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
      const after = from;
      const page = await this.limited(() => this.o.fetch(conversationId, after));
      for (const m of page.messages) {
        if (m.seq > upTo) return;
        this.note(m);
        this.o.emit(m, "sync");
        from = m.seq;
      }
      if (!page.hasMore || page.messages.length === 0) return;
    }
  }

  /** Runs `fetch` once fewer than CATCH_UP_CONCURRENCY fetches are in flight. */
  private async limited<T>(fetch: () => Promise<T>): Promise<T> {
    if (this.fetching < (this.o.concurrency ?? CATCH_UP_CONCURRENCY)) this.fetching++;
    else await new Promise<void>((resolve) => this.fetchQueue.push(resolve)); // its slot is handed over
    try {
      return await fetch();
    } finally {
      const next = this.fetchQueue.shift();
      if (next) next();
      else this.fetching--;
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
    this.put(conversationId, seq);
    this.o.changed?.();
  }

  private put(conversationId: string, seq: number): void {
    this.seqs.delete(conversationId);
    this.seqs.set(conversationId, seq);
    if (this.seqs.size > this.o.capacity) this.seqs.delete(this.evictable());
  }

  /**
   * The position to forget when over capacity: the oldest of a conversation not on pull (a direct
   * one, or a group seen in the inbox), so that busy push conversations never push out a quiet pull
   * one, whose lost position would skip what it got while the app was closed; only when every
   * position is a pull conversation's, the oldest of those.
   */
  private evictable(): string {
    for (const c of this.seqs.keys()) if (!this.pull.has(c)) return c;
    return this.seqs.keys().next().value as string;
  }
}
