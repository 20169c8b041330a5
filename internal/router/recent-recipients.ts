/**
 * The users this router handed a message to lately: two generations of a set, the older dropped as
 * a new one starts (at the first batch `windowMs` or more after the current one started). `has`
 * answers for at least the last `windowMs`, and for up to about three windows, at one Set insertion
 * per recipient and no timer.
 *
 * What it is for: a session the routing table learns of a little after its gateway published it
 * may have synced and gone live in between, and a message this router handed out then went to its
 * user's other devices or to push, not to it. Only a user who was handed a message in that window
 * needs its inbox looked at again.
 */
export class RecentRecipients {
  private current = new Set<string>();
  private previous = new Set<string>();
  private startedAtMs: number;

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAtMs = now();
  }

  /** Call once per batch, before `add`: starts a new generation when the current one is old. */
  rotate(): void {
    const t = this.now();
    const age = t - this.startedAtMs;
    if (age < this.windowMs) return;
    // After two windows of silence the current generation is too old to keep as well.
    this.previous = age < 2 * this.windowMs ? this.current : new Set();
    this.current = new Set();
    this.startedAtMs = t;
  }

  add(userId: string): void {
    this.current.add(userId);
  }

  has(userId: string): boolean {
    this.rotate();
    return this.current.has(userId) || this.previous.has(userId);
  }
}
