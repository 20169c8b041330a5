/**
 * Token bucket: `ratePerSecond` sustained, `burst` at once. `take` reports how long to wait when
 * empty, and counts the refusal as debt (`flooded` tells a client slightly over the limit, answered
 * RATE_LIMITED, from a flood, whose connection closes); `takeIfAny` refuses without debt.
 */
import { dropOldest } from "../lib/drop-oldest.js";

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
    if (this.takeIfAny() === 0) return 0;
    // Keep counting refusals as debt (down to -burst) so a flood is recognisable.
    this.tokens = Math.max(this.tokens - 1, -this.burst);
    return this.untilToken();
  }

  /**
   * Takes one token if there is one; a refusal takes nothing. For a limit shared by several clients
   * that wait as told: with debt, one's refusals would eat the tokens another waits for, and clients
   * retrying together could be refused for ever. Returns 0, else the milliseconds until a token.
   */
  takeIfAny(n = 1): number {
    this.refill();
    if (this.tokens >= n) {
      this.tokens -= n;
      return 0;
    }
    return this.untilToken(n);
  }

  /**
   * Takes `n` tokens after the fact (for work whose cost is known once done), into debt down to
   * -burst: the next take waits until it is paid off.
   */
  charge(n: number): void {
    this.refill();
    this.tokens = Math.max(this.tokens - n, -this.burst);
  }

  /** Gives back what takeIfAny took (for a request another limit then refused). */
  refund(n: number): void {
    this.tokens = Math.min(this.burst, this.tokens + n);
  }

  /** Milliseconds until the bucket holds `n` whole tokens again. */
  private untilToken(n = 1): number {
    return Math.ceil(((n - this.tokens) * 1000) / this.ratePerSecond);
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

  /**
   * `debt` false: a refusal takes nothing (TokenBucket.takeIfAny), for a limit whose refusals are
   * no flood signal and whose user's connections retry side by side.
   */
  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly options: { debt?: boolean; now?: () => number } = {},
  ) {}

  /** Takes one token of `userId`'s bucket: 0, or the milliseconds until one is available. */
  take(userId: string): number {
    const bucket = this.of(userId);
    return this.options.debt === false ? bucket.takeIfAny() : bucket.take();
  }

  /**
   * Takes `n` tokens (at most the burst: a larger request costs a full bucket) if there are as many,
   * without debt: 0, or the milliseconds until there are. Returns the refund of what it took.
   */
  takeMany(userId: string, n: number): { waitMs: number; refund: () => void } {
    const bucket = this.of(userId);
    const cost = Math.min(n, this.burst);
    const waitMs = bucket.takeIfAny(cost);
    return { waitMs, refund: () => (waitMs === 0 ? bucket.refund(cost) : undefined) };
  }

  /** Takes `n` more tokens of `userId`'s bucket after the fact (TokenBucket.charge). */
  charge(userId: string, n: number): void {
    this.of(userId).charge(n);
  }

  private of(userId: string): TokenBucket {
    let bucket = this.buckets.get(userId);
    if (!bucket) {
      bucket = new TokenBucket(this.ratePerSecond, this.burst, this.options.now);
      this.buckets.set(userId, bucket);
    }
    return bucket;
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

/**
 * At most one event per key per `intervalMs`: `due` asks, `mark` records an event that happened (so
 * an event another limit then refused does not count). Remembers the newest `keysMax` keys.
 */
export class Throttle {
  private readonly last = new Map<string, number>();

  constructor(
    private readonly intervalMs: number,
    private readonly keysMax: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether the key's last event is at least `intervalMs` old (or unknown). */
  due(key: string): boolean {
    const last = this.last.get(key);
    return last === undefined || this.now() - last >= this.intervalMs;
  }

  /** Records an event of `key` now. */
  mark(key: string): void {
    this.last.delete(key);
    this.last.set(key, this.now());
    if (this.last.size > this.keysMax) dropOldest(this.last);
  }
}
