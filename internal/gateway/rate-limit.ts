/**
 * Token bucket: `ratePerSecond` sustained, `burst` at once. `take` reports how long to wait when
 * empty; `deficit` lets the caller tell a client slightly over the limit (answer RATE_LIMITED) from
 * a flood (close the connection).
 */
export class TokenBucket {
  private tokens: number;
  private updatedMs: number;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = burst;
    this.updatedMs = now();
  }

  private refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updatedMs) * this.ratePerSecond) / 1000);
    this.updatedMs = now;
  }

  /** Takes one token; returns 0 on success, else the milliseconds until one is available. */
  take(): number {
    this.refill();
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    // Keep counting refusals as debt (down to -burst) so a flood is recognisable.
    this.tokens = Math.max(this.tokens - 1, -this.burst);
    return Math.ceil(((1 - this.tokens) * 1000) / this.ratePerSecond);
  }

  /** True when the bucket has refilled to its burst: forgetting it now changes nothing. */
  full(): boolean {
    this.refill();
    return this.tokens >= this.burst;
  }

  /** True when refusals have piled up to a full burst of debt: the client ignores RATE_LIMITED. */
  flooded(): boolean {
    return this.tokens <= -this.burst;
  }
}

/**
 * A token bucket per user. A bucket is forgotten only once its user is gone and it has refilled:
 * forgetting it earlier would hand a reconnecting user a fresh burst.
 */
export class UserBuckets {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {}

  /** Takes one token of `userId`'s bucket: 0, or the milliseconds until one is available. */
  take(userId: string): number {
    let bucket = this.buckets.get(userId);
    if (!bucket) {
      bucket = new TokenBucket(this.ratePerSecond, this.burst);
      this.buckets.set(userId, bucket);
    }
    return bucket.take();
  }

  /** Forgets the buckets of users `gone` says left, those that have refilled. */
  forgetRefilled(gone: (userId: string) => boolean): void {
    for (const [userId, bucket] of this.buckets)
      if (gone(userId) && bucket.full()) this.buckets.delete(userId);
  }

  /** Forgets `userId`'s bucket if it has refilled (the user's last connection closed). */
  forgetIfRefilled(userId: string): void {
    if (this.buckets.get(userId)?.full()) this.buckets.delete(userId);
  }
}

/** At most one event per key per `intervalMs`; remembers the newest `keysMax` keys. */
export class Throttle {
  private readonly last = new Map<string, number>();

  constructor(
    private readonly intervalMs: number,
    private readonly keysMax: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True (and the key's time is taken) when the key's last event is at least `intervalMs` old. */
  take(key: string): boolean {
    const now = this.now();
    const last = this.last.get(key);
    if (last !== undefined && now - last < this.intervalMs) return false;
    this.last.delete(key);
    this.last.set(key, now);
    if (this.last.size > this.keysMax) this.last.delete(this.last.keys().next().value as string);
    return true;
  }
}
