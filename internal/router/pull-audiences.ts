/**
 * The members of pull conversations (ADR 0010), as sets, for sending each of their messages live to
 * the members who are online. A pull message names no recipients (it has no inbox entries), so the
 * router looks its audience up here and intersects it with the users it knows to be connected.
 *
 * Bounded by the member ids held (the least recently loaded sets go first). The distributed router
 * keeps the sets across batches and drops one when the conversation's membership changes (the change
 * reaches it in order with the conversation's messages); the embedded router reads them per batch.
 */

/** Member sets read at once. */
const READS_CONCURRENT = 8;

export class PullAudiences {
  private readonly sets = new Map<string, ReadonlySet<string>>();
  private held = 0;

  constructor(
    private readonly readMembers: (conversationId: string) => Promise<readonly string[]>,
    private readonly memberIdsMax = 2_000_000,
  ) {}

  /** Reads the sets of these conversations that are not held. */
  async load(conversationIds: Iterable<string>): Promise<void> {
    const missing = [...new Set(conversationIds)].filter((c) => !this.sets.has(c));
    for (let i = 0; i < missing.length; i += READS_CONCURRENT) {
      const slice = missing.slice(i, i + READS_CONCURRENT);
      const lists = await Promise.all(slice.map((c) => this.readMembers(c)));
      for (const [j, c] of slice.entries()) this.hold(c, new Set(lists[j]));
    }
  }

  /** Reads these conversations' sets again (what the embedded router does for every batch). */
  async refresh(conversationIds: Iterable<string>): Promise<void> {
    const ids = [...new Set(conversationIds)];
    for (const c of ids) this.forget(c);
    await this.load(ids);
  }

  get(conversationId: string): ReadonlySet<string> | undefined {
    return this.sets.get(conversationId);
  }

  /** The membership changed: read the set again before the next message. */
  forget(conversationId: string): void {
    const set = this.sets.get(conversationId);
    if (!set) return;
    this.sets.delete(conversationId);
    this.held -= set.size;
  }

  private hold(conversationId: string, set: ReadonlySet<string>): void {
    this.sets.set(conversationId, set);
    this.held += set.size;
    // Keep the newest set even when it alone is over the bound: the batch in hand needs it.
    for (const [c, s] of this.sets) {
      if (this.held <= this.memberIdsMax || c === conversationId) break;
      this.sets.delete(c);
      this.held -= s.size;
    }
  }
}
