/**
 * When to try a push delivery again (docs/adr/0008 §4): a provider's Retry-After is honoured exactly up
 * to a cap; without one, exponential backoff with equal jitter, so the retries of an outage's many
 * notifications spread out instead of arriving in synchronised waves.
 */
export interface RetryPolicy {
  /** Attempts per (notification, device), the first included. */
  attemptsMax: number;
  /** Backoff before the second attempt; doubles per attempt. */
  backoffBaseMs: number;
  /** Largest backoff without a Retry-After. */
  backoffMaxMs: number;
  /** Longest Retry-After waited for; a longer one gives the delivery up. */
  retryAfterMaxMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  attemptsMax: 5,
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  retryAfterMaxMs: 300_000,
};

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; why: string };

/**
 * The decision after attempt number `attempt` (1-based) failed transiently; `retryAfterMs` is what the
 * provider asked for, if anything. `random` is injectable for tests.
 */
export function nextRetry(
  policy: RetryPolicy,
  attempt: number,
  retryAfterMs: number | undefined,
  random: () => number = Math.random,
): RetryDecision {
  if (attempt >= policy.attemptsMax) return { retry: false, why: `gave up after ${attempt} attempts` };
  if (retryAfterMs !== undefined) {
    if (retryAfterMs > policy.retryAfterMaxMs) {
      return { retry: false, why: `Retry-After of ${retryAfterMs} ms exceeds ${policy.retryAfterMaxMs} ms` };
    }
    return { retry: true, delayMs: retryAfterMs };
  }
  const ceiling = Math.min(policy.backoffMaxMs, policy.backoffBaseMs * 2 ** (attempt - 1));
  return { retry: true, delayMs: Math.round(ceiling / 2 + random() * (ceiling / 2)) };
}
