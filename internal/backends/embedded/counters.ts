/**
 * The message path's in-memory counters (a conversation's last seq, a user's inbox head), bounded.
 *
 * A counter is assigned in memory before its write commits, so it may be ahead of the disk while a
 * write is pending, and only then: an entry may be dropped, and reloaded from the disk on the next
 * miss, once every write queued before it was last set has settled. Entries go in generations
 * instead of one by one: when `current` holds `max` keys it becomes `previous` (still read, never
 * set) and a new `current` starts; `previous` is dropped whole once the writes queued until then have
 * settled (TurnCommits.settled). A key used again meanwhile is set in `current`, so what is dropped
 * has no pending write. Per use: one or two Map lookups; no delete per key, and no Map that grows and
 * shrinks with every message (which made old-generation garbage, ADR 0011).
 *
 * `current` may pass `max` while a dropped generation waits for its writes (by the keys set during
 * one commit), so at most about 2 × max keys are kept.
 */
export class SettledCounters {
  private current = new Map<string, number>();
  private previous: Map<string, number> | undefined;

  constructor(
    private readonly max: number,
    /** Settles once every write queued so far has settled. */
    private readonly settled: () => Promise<void>,
  ) {}

  get(key: string): number | undefined {
    return this.current.get(key) ?? this.previous?.get(key);
  }

  set(key: string, value: number): void {
    // Before the set: the key being set (its write not queued yet) always lands in the new generation.
    if (this.current.size >= this.max && this.previous === undefined && !this.current.has(key)) this.rotate();
    this.current.set(key, value);
  }

  /** Keys kept now (for tests). */
  get size(): number {
    return this.current.size + (this.previous?.size ?? 0);
  }

  private rotate(): void {
    const old = this.current;
    this.previous = old;
    this.current = new Map();
    // Asked once this turn of the event loop is over: keys set earlier in it (an inbox update sets
    // several users' heads, then queues their write) have their writes queued by then.
    setImmediate(() => {
      void this.settled().then(() => {
        if (this.previous === old) this.previous = undefined;
      });
    });
  }
}
