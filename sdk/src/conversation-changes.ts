/**
 * The newest change seen of each conversation, by its `conversation` events: an event of an older
 * change that arrives after a newer one (a router failing re-sends what it had, after others went
 * through another router) is stale, and the app is not shown it. Events are ordered by the
 * conversation's `version` (one more per stored change); from a server that keeps no versions (0),
 * by `changedAtMs`. Bounded: past CONVERSATIONS_TRACKED_MAX the conversation seen least lately is
 * forgotten (its next event passes).
 */
const CONVERSATIONS_TRACKED_MAX = 10_000;

interface Change {
  version: bigint;
  changedAtMs: bigint;
}

export class ConversationChanges {
  private readonly newest = new Map<string, Change>();

  /** Whether an event of `conversationId` showing `change` is older than one seen before. */
  isStale(conversationId: string, change: Change): boolean {
    const seen = this.newest.get(conversationId);
    if (seen !== undefined && older(change, seen)) return true;
    this.newest.delete(conversationId); // re-inserted: the most lately seen is the last to go
    // What an event does not say (0) keeps what was seen: an older version stays older.
    this.newest.set(conversationId, {
      version: change.version || seen?.version || 0n,
      changedAtMs: change.changedAtMs || seen?.changedAtMs || 0n,
    });
    if (this.newest.size > CONVERSATIONS_TRACKED_MAX)
      this.newest.delete(this.newest.keys().next().value as string);
    return false;
  }
}

/** Whether `a` is an older state than `b`; what neither says (0) is never older. */
function older(a: Change, b: Change): boolean {
  if (a.version !== 0n && b.version !== 0n) return a.version < b.version;
  if (a.changedAtMs !== 0n && b.changedAtMs !== 0n) return a.changedAtMs < b.changedAtMs;
  return false;
}
