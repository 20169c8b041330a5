/**
 * Whom the sequencer addresses a message to: the members of its conversation as of its seq (ADR 0012).
 *
 * A membership counts for the seqs after the bound of its start and, once it ended, up to the bound of
 * its end; a bound is the conversation's head when the sequencer met the change's announcement in the
 * drafts partition. A change without a bound has not been met yet: for a message before it in the
 * partition, a membership it starts does not count yet and one it ends still does. So a message
 * handled again after a crash goes to the members it went to the first time, not to those of the
 * restart, however often a user left and came back in between.
 *
 * An announcement that was never made (its process died after storing the change) would leave a change
 * unbound for ever: it takes effect for the messages created `UNANNOUNCED_AFTER_MS` after it, as the
 * sequencer's member lists were re-read after that long before bounds existed.
 */
import type { ChangeBound, MembershipAsOfSeqs } from "../types.js";

export const UNANNOUNCED_AFTER_MS = 5 * 60_000;

/**
 * How long before the oldest record of a batch the memberships that ended still matter to it and to
 * every later one. A departure counts for a message only if the message comes before the departure's
 * announcement in the partition (its seq is at most the departure's bound), and an announcement
 * follows its change by milliseconds; a draft's record time may lag its place by its producer's
 * retries and the clocks' skew, and a change never announced counts from UNANNOUNCED_AFTER_MS after
 * it. So a departure stored more than that long before the batch's oldest record concerns none of
 * the messages the owner will address with the lists it reads now: they are not read.
 */
export const DEPARTURES_LOOKBACK_MS = UNANNOUNCED_AFTER_MS + 5 * 60_000;

/** Whether the change has happened for the message with `seq`, created at `createdAtMs`. */
function happened(change: ChangeBound, seq: number, createdAtMs: number): boolean {
  return change.seq === undefined
    ? createdAtMs - change.changedAtMs > UNANNOUNCED_AFTER_MS
    : change.seq < seq;
}

export class SeqAudience {
  /** The bound members: every message after `boundsUpTo` goes to them alone, when none is unbound. */
  private readonly bound: readonly string[];
  private readonly boundsUpTo: number;
  private readonly anyUnbound: boolean;

  constructor(readonly bounds: MembershipAsOfSeqs) {
    this.bound = bounds.members.filter((m) => m.joined.seq !== undefined).map((m) => m.user);
    let upTo = 0;
    let unbound = false;
    const changes = [
      ...bounds.members.map((m) => m.joined),
      ...bounds.departed.flatMap((d) => [d.joined, d.left]),
    ];
    for (const change of changes) {
      if (change.seq === undefined) unbound = true;
      else if (change.seq > upTo) upTo = change.seq;
    }
    this.boundsUpTo = upTo;
    this.anyUnbound = unbound;
  }

  /** The recipients of the message with `seq`, created (received by its gateway) at `createdAtMs`. */
  at(seq: number, createdAtMs: number): readonly string[] {
    if (!this.anyUnbound && seq > this.boundsUpTo) return this.bound;
    const out = new Set<string>();
    for (const m of this.bounds.members) if (happened(m.joined, seq, createdAtMs)) out.add(m.user);
    for (const d of this.bounds.departed)
      if (happened(d.joined, seq, createdAtMs) && !happened(d.left, seq, createdAtMs)) out.add(d.user);
    return [...out];
  }
}
