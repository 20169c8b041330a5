export interface BackoffOptions {
  /** First retry ceiling, ms (default 250). */
  baseMs: number;
  /** Largest ceiling, ms (default 10,000). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 250, maxMs: 10_000 };

/**
 * "Full jitter" exponential backoff: a uniform delay in [0, min(max, base * 2^attempt)). Full jitter
 * (rather than ±x%) spreads a herd of clients reconnecting after a gateway restart across the whole
 * window, which is what keeps the restarted gateway from being flattened.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * For "slow down" signals (close 3013): three doublings further along, and never less than half the
 * ceiling, so the client really does back off instead of drawing a lucky zero.
 */
export function longBackoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt + 3, 30));
  return Math.floor(ceiling / 2 + (random() * ceiling) / 2);
}
