export interface BackoffOptions {
  /** First retry ceiling, ms (default 250). */
  baseMs: number;
  /** Largest ceiling, ms (default 10,000). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 250, maxMs: 10_000 };

/** The least ceiling the outage's age allows (below it, attempt counts alone decide). */
export const SHORT_OUTAGE_CEILING_MS = 1_000;

/**
 * "Full jitter" exponential backoff: a uniform delay in [0, min(max, base * 2^attempt)). Full jitter
 * (rather than ±x%) spreads a herd of clients reconnecting after a gateway restart across the whole
 * window, which is what keeps the restarted gateway from being flattened.
 *
 * With `outageMs` (how long the client has been without a working connection) the ceiling is also
 * at most half that time (and at least SHORT_OUTAGE_CEILING_MS): after a short outage — a process
 * restarted in a second or two — every client is back within about 1.5 times the outage, instead of
 * the unlucky ones having drawn a 4 or 8 s wait from attempts that all fell into it. Long outages
 * still back off to `maxMs`.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
  outageMs = Number.POSITIVE_INFINITY,
): number {
  const byAttempts = options.baseMs * 2 ** Math.min(attempt, 30);
  const byAge = Math.max(SHORT_OUTAGE_CEILING_MS, outageMs / 2);
  const ceiling = Math.min(options.maxMs, byAttempts, byAge);
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
