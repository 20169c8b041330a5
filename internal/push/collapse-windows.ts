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
  private readonly windows = new Map<string, Window<N>>();

  constructor(
    private readonly windowMs: number,
    private readonly onSummary: (key: string, burst: Burst<N>) => void,
    /** Conversations tracked at most; past it the oldest windows are forgotten (their summaries sent). */
    private readonly keysMax = 100_000,
  ) {}

  /** True: notify now. False: held for the window's summary. */
  admit(key: string, notification: N, nowMs = Date.now()): boolean {
    const open = this.windows.get(key);
    if (this.windowMs > 0 && open && nowMs - open.openedAtMs < this.windowMs) {
      open.held = { latest: notification, count: (open.held?.count ?? 0) + 1 };
      open.timer ??= setTimeout(() => this.close(key), open.openedAtMs + this.windowMs - nowMs);
      return false;
    }
    if (open) this.windows.delete(key); // expired, nothing held: re-inserted as the newest
    if (this.windows.size >= this.keysMax) this.evictOldest();
    this.windows.set(key, { openedAtMs: nowMs, held: undefined, timer: undefined });
    return true;
  }

  /** Windows with held messages (their summaries are due). */
  get holding(): number {
    let n = 0;
    for (const w of this.windows.values()) if (w.held) n++;
    return n;
  }

  /** Sends every held summary now (shutdown) and forgets all windows. */
  flushAll(): void {
    for (const key of [...this.windows.keys()]) this.close(key, false);
    this.windows.clear();
  }

  private close(key: string, reopen = true): void {
    const window = this.windows.get(key);
    if (!window) return;
    clearTimeout(window.timer);
    this.windows.delete(key);
    if (!window.held) return;
    if (reopen) this.windows.set(key, { openedAtMs: Date.now(), held: undefined, timer: undefined });
    this.onSummary(key, window.held);
  }

  private evictOldest(): void {
    // Maps iterate in insertion order: the first key is the longest-tracked window.
    const oldest = this.windows.keys().next().value;
    if (oldest !== undefined) this.close(oldest, false);
  }
}
