/**
 * The newest change seen of each conversation, by the `changedAtMs` of its `conversation` events: an
 * event of an older change that arrives after a newer one (a router failing re-sends what it had,
 * after others went through another router) is stale, and the app is not shown it. Bounded: past
 * CONVERSATIONS_TRACKED_MAX the conversation seen least lately is forgotten (its next event passes).
 */
const CONVERSATIONS_TRACKED_MAX = 10_000;

export class ConversationChanges {
  private readonly newest = new Map<string, bigint>();

  /** Whether an event of `conversationId` changed at `changedAtMs` is older than one seen before. */
  isStale(conversationId: string, changedAtMs: bigint): boolean {
    if (changedAtMs === 0n) return false; // a server that does not say
    const seen = this.newest.get(conversationId);
    if (seen !== undefined && changedAtMs < seen) return true;
    this.newest.delete(conversationId); // re-inserted: the most lately seen is the last to go
    this.newest.set(conversationId, changedAtMs);
    if (this.newest.size > CONVERSATIONS_TRACKED_MAX)
      this.newest.delete(this.newest.keys().next().value as string);
    return false;
  }
}
