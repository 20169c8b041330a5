/**
 * Whom the sequencer addresses a message to: the members of its conversation as of its seq (ADR 0012).
 *
 * A member counts for the seqs after its bound, a removed member for those up to its bound; the bound
 * is the conversation's head when the sequencer met the change's announcement in the drafts partition.
 * A change without a bound has not been met yet: for a message before it in the partition, a new
 * member does not count yet and a removed one still does. So a message handled again after a crash
 * goes to the members it went to the first time, not to those of the restart.
 *
 * An announcement that was never made (its process died after storing the change) would leave a change
 * unbound for ever: it takes effect for the messages created `UNANNOUNCED_AFTER_MS` after it, as the
 * sequencer's member lists were re-read after that long before bounds existed.
 */
import type { MembershipAsOfSeqs, MembershipBound } from "../types.js";

export const UNANNOUNCED_AFTER_MS = 5 * 60_000;

export class SeqAudience {
  /** The bound members: every message after `boundsUpTo` goes to them alone, when none is unbound. */
  private readonly bound: readonly string[];
  private readonly boundsUpTo: number;
  private readonly anyUnbound: boolean;

  constructor(readonly bounds: MembershipAsOfSeqs) {
    this.bound = bounds.members.filter((b) => b.seq !== undefined).map((b) => b.user);
    let upTo = 0;
    let unbound = false;
    for (const b of [...bounds.members, ...bounds.departed]) {
      if (b.seq === undefined) unbound = true;
      else if (b.seq > upTo) upTo = b.seq;
    }
    this.boundsUpTo = upTo;
    this.anyUnbound = unbound;
  }

  /** The recipients of the message with `seq`, created (received by its gateway) at `createdAtMs`. */
  at(seq: number, createdAtMs: number): readonly string[] {
    if (!this.anyUnbound && seq > this.boundsUpTo) return this.bound;
    const unannounced = (b: MembershipBound) => createdAtMs - b.changedAtMs > UNANNOUNCED_AFTER_MS;
    const out = new Set<string>();
    for (const b of this.bounds.members)
      if (b.seq === undefined ? unannounced(b) : b.seq < seq) out.add(b.user);
    for (const b of this.bounds.departed)
      if (b.seq === undefined ? !unannounced(b) : seq <= b.seq) out.add(b.user);
    return [...out];
  }
}
