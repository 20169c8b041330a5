/**
 * The time a worker's ids were issued up to, persisted, so that a restarted generator with the same
 * worker id never issues an id again: after the clock stepped back (NTP, a VM restored) and the
 * process restarted, a generator that starts from the wall clock alone would mint ids it already gave
 * (and the SDK drops a message whose message_id it has seen).
 *
 * Reserved ahead, not written per id: before ids of a millisecond at or past the stored mark go out,
 * the mark is moved to `max(that millisecond, now) + leaseMs` and stored (one durable write about
 * every leaseMs / 2 while ids are issued, none while idle). A restarted generator starts at the stored
 * mark (Snowflake floorMs): at most leaseMs ahead of the last id it gave, so ahead of the wall clock by
 * at most leaseMs after a quick restart, which Snowflake absorbs (maxBackwardsMs, 5 s, > leaseMs).
 */

/**
 * Where the mark is kept: EmbeddedBackends.idHighWater (the data file), or on the distributed backend
 * a row per worker id in Cassandra (cassandra/id-high-water.ts), which every process configured with
 * that worker id shares: worker ids must be unique among the processes of a keyspace.
 */
export interface HighWaterStore {
  /** The stored mark (ms since the Unix epoch), if any. */
  load(): number | undefined;
  /** Stores the mark durably (resolves once it is). */
  store(untilMs: number): Promise<void>;
}

export const HIGH_WATER_LEASE_MS = 2_000;

export class HighWaterMark {
  /** Ids below this millisecond may go out: the stored mark. */
  private durableMs: number;
  private writing: Promise<void> | undefined;

  constructor(
    private readonly store: HighWaterStore,
    private readonly now: () => number,
    private readonly leaseMs = HIGH_WATER_LEASE_MS,
  ) {
    this.durableMs = store.load() ?? 0;
  }

  /** The generator's floor at start: no id of this run below it. */
  get floorMs(): number {
    return this.durableMs;
  }

  /**
   * Resolves once ids of milliseconds up to `ms` may go out (the mark stored past it); starts moving
   * the mark ahead when less than half a lease is left. Rejects if the store fails: the ids are then
   * not handed out (the generator has moved past them; nothing is issued twice).
   */
  async cover(ms: number): Promise<void> {
    if (this.durableMs - ms <= this.leaseMs / 2 && !this.writing) void this.extend(ms).catch(() => undefined);
    while (ms >= this.durableMs) await (this.writing ?? this.extend(ms));
  }

  private extend(ms: number): Promise<void> {
    const target = Math.max(ms, this.now(), this.durableMs) + this.leaseMs;
    const writing: Promise<void> = this.store
      .store(target)
      .then(() => {
        if (target > this.durableMs) this.durableMs = target;
      })
      .finally(() => {
        if (this.writing === writing) this.writing = undefined;
      });
    this.writing = writing;
    writing.catch(() => undefined); // reported to the callers waiting for it
    return writing;
  }
}
