/**
 * Bursts per (user, conversation): the first message of a quiet conversation notifies at once; those
 * that follow within the window are held, and when it closes one summary goes out carrying the latest
 * message and how many were held (it replaces the first on the device: same collapse id). The summary
 * opens the next window, so a steady stream notifies at most once per window.
 */
export interface Burst<N> {
  latest: N;
  /** Messages held since the last notification. */
  count: number;
}

interface Window<N> {
  openedAtMs: number;
  held: Burst<N> | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class CollapseWindows<N> {
  /**
   * In the order the windows opened (a window that opens again is deleted and set anew), so the
   * first ones are the oldest: the sweep stops at the first still open.
   */
  private readonly windows = new Map<string, Window<N>>();
  /** Sweeps the windows that ended, while there are any: one timer, not one per window. */
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly windowMs: number,
    private readonly onSummary: (key: string, burst: Burst<N>) => void,
    /** Conversations tracked at most; past it the oldest windows are forgotten (their summaries sent). */
    private readonly keysMax = 100_000,
  ) {}

  /** True: notify now. False: held for the window's summary. */
  admit(key: string, notification: N, nowMs = Date.now()): boolean {
    if (this.windowMs <= 0) return true;
    this.sweep(nowMs);
    let open = this.windows.get(key);
    // Past its end but its timer has not run yet (a busy event loop): it closes now, its burst's
    // summary goes out first and opens the next window, as the timer would have done.
    if (open && nowMs - open.openedAtMs >= this.windowMs) {
      this.close(key, nowMs);
      open = this.windows.get(key);
    }
    if (open) {
      open.held = { latest: notification, count: (open.held?.count ?? 0) + 1 };
      const window = open;
      window.timer ??= setTimeout(
        () => {
          // Only the window it was set for: a later one under the same key has a timer of its own.
          if (this.windows.get(key) === window) this.close(key);
        },
        window.openedAtMs + this.windowMs - nowMs,
      );
      return false;
    }
    if (this.windows.size >= this.keysMax) this.evictOldest();
    this.windows.set(key, { openedAtMs: nowMs, held: undefined, timer: undefined });
    this.sweeper ??= setInterval(() => this.sweep(Date.now()), this.windowMs).unref();
    return true;
  }

  /** Windows tracked (open or holding a burst). */
  get size(): number {
    return this.windows.size;
  }

  /**
   * Forgets the windows that ended with nothing held: a conversation notified once and quiet since
   * would otherwise stay until the cap (100,000 keys, ~20 MB) evicted it. One holding a burst has
   * its timer, which sends the summary.
   */
  private sweep(nowMs: number): void {
    for (const [key, window] of this.windows) {
      if (nowMs - window.openedAtMs < this.windowMs) break;
      if (!window.held) this.windows.delete(key);
    }
    if (this.windows.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Windows with held messages (their summaries are due). */
  get holding(): number {
    let n = 0;
    for (const w of this.windows.values()) if (w.held) n++;
    return n;
  }

  /** Sends every held summary now (shutdown) and forgets all windows. */
  flushAll(): void {
    for (const key of [...this.windows.keys()]) this.close(key, Date.now(), false);
    this.windows.clear();
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** Ends the window: a held burst is summarised, and (`reopen`) the summary opens the next window at `nowMs`. */
  private close(key: string, nowMs = Date.now(), reopen = true): void {
    const window = this.windows.get(key);
    if (!window) return;
    clearTimeout(window.timer);
    this.windows.delete(key);
    if (!window.held) return;
    if (reopen) this.windows.set(key, { openedAtMs: nowMs, held: undefined, timer: undefined });
    this.onSummary(key, window.held);
  }

  private evictOldest(): void {
    // Maps iterate in insertion order: the first key is the longest-tracked window.
    const oldest = this.windows.keys().next().value;
    if (oldest !== undefined) this.close(oldest, Date.now(), false);
  }
}
