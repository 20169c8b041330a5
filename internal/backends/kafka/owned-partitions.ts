/**
 * The partitions a fenced owner (sequencer, inbox owner) holds in the current consumer-group
 * generation (ADR 0002): each is claimed once, on its first batch, for an epoch and a fresh state
 * (caches that hold only for that epoch); after its writes the owner checks that the epoch is still
 * the partition's newest before it acknowledges anything, and a partition found claimed by a successor
 * stays refused until the next generation.
 */
import { hostname } from "node:os";
import { errors } from "../../lib/errors.js";
import type { Logger } from "../../lib/log.js";
import type { OwnershipStore } from "../types.js";

export interface OwnedPartitionsOptions<S> {
  /** The stream name in OwnershipStore ("drafts", "inbox"). */
  stream: string;
  ownership: OwnershipStore;
  log: Logger;
  /** The error reason when fenced (e.g. SEQUENCER_FENCED) and what the batch would have done. */
  fencedReason: string;
  fencedConsequence: string;
  /** A partition's state for a new claim. */
  fresh: (epoch: bigint, partition: number) => S;
}

export class OwnedPartitions<S extends { readonly epoch: bigint }> {
  /** Claimed partitions of this generation (a rejected promise: fenced). */
  private claims = new Map<number, Promise<S>>();
  /** Partitions of this generation found claimed by a successor. */
  private fenced = new Set<number>();
  private readonly owner = `${hostname()}/${process.pid}`;
  /** Claims made and batches fenced (a successor claimed while this process worked). */
  readonly stats = { claims: 0, fenced: 0 };

  constructor(private readonly o: OwnedPartitionsOptions<S>) {}

  /** A new group generation: every partition is claimed again before use, with a fresh state. */
  reset(): void {
    this.claims = new Map();
    this.fenced = new Set();
  }

  /**
   * The next batch of `partition` claims it again, under a newer epoch and with a fresh state (not a
   * partition a successor holds): after a write that failed part-way, what the owner writes next
   * must win over whatever of it landed, at every cell, which writes under the same epoch (the same
   * write timestamp: Cassandra then keeps the larger value) would not.
   */
  renew(partition: number): void {
    if (!this.fenced.has(partition)) this.claims.delete(partition);
  }

  claim(partition: number): Promise<S> {
    const known = this.claims.get(partition);
    if (known) return known;
    const claimed = this.o.ownership.claim(this.o.stream, partition, this.owner).then((epoch) => {
      this.stats.claims++;
      this.o.log.info(`${this.o.stream}: claimed partition`, { partition, epoch: epoch.toString() });
      return this.o.fresh(epoch, partition);
    });
    claimed.catch(() => {
      if (this.claims.get(partition) === claimed) this.claims.delete(partition);
    });
    this.claims.set(partition, claimed);
    return claimed;
  }

  /** Throws (and refuses the partition until the next generation) unless `state`'s epoch is the newest. */
  async check(partition: number, state: S): Promise<void> {
    const current = await this.o.ownership.current(this.o.stream, partition);
    if (current === state.epoch) return;
    this.stats.fenced++;
    this.fenced.add(partition);
    const fenced = errors.unavailable(
      this.o.fencedReason,
      `${this.o.stream} partition ${partition} was claimed by another owner (epoch ${current} > ${state.epoch}); ` +
        this.o.fencedConsequence,
    );
    const rejected = Promise.reject(fenced);
    rejected.catch(() => undefined);
    this.claims.set(partition, rejected);
    throw fenced;
  }
}
