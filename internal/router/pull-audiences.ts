/**
 * The members of pull conversations (ADR 0010), as sets, for sending each of their messages live to
 * the members who are online. A pull message names no recipients (it has no inbox entries), so the
 * router looks its audience up here and intersects it with the users it knows to be connected.
 *
 * Bounded by the member ids held (the least recently loaded sets go first). The distributed router
 * keeps the sets across batches and drops one when the conversation's membership changes (the change
 * reaches it in order with the conversation's messages); so does the embedded router, told by its
 * store when members change (MembershipStore.watch), and without it reads them per batch.
 */

/** Member sets read at once. */
const READS_CONCURRENT = 8;

export class PullAudiences {
  private readonly sets = new Map<string, ReadonlySet<string>>();
  private held = 0;
  /** Conversations being read, and whether their membership changed during the read. */
  private readonly reading = new Map<string, { changed: boolean }>();

  constructor(
    private readonly readMembers: (conversationId: string) => Promise<readonly string[]>,
    private readonly memberIdsMax = 2_000_000,
  ) {}

  /**
   * The member sets of these conversations, read where not held. A set whose membership changed while
   * it was read serves the batch that asked but is not kept.
   */
  async load(conversationIds: Iterable<string>): Promise<Map<string, ReadonlySet<string>>> {
    const { sets, unreadable } = await this.loadSettled(conversationIds);
    if (unreadable.length > 0) throw unreadable[0]!.error;
    return sets;
  }

  /** As `load`, but a set that cannot be read is named, not kept from the others. */
  async loadSettled(conversationIds: Iterable<string>): Promise<{
    sets: Map<string, ReadonlySet<string>>;
    unreadable: Array<{ conversationId: string; error: unknown }>;
  }> {
    const out = new Map<string, ReadonlySet<string>>();
    const unreadable: Array<{ conversationId: string; error: unknown }> = [];
    const missing: string[] = [];
    for (const c of new Set(conversationIds)) {
      const held = this.sets.get(c);
      if (held) out.set(c, held);
      else missing.push(c);
    }
    for (let i = 0; i < missing.length; i += READS_CONCURRENT) {
      const slice = missing.slice(i, i + READS_CONCURRENT);
      const marks = slice.map((c) => {
        const mark = { changed: false };
        this.reading.set(c, mark);
        return mark;
      });
      try {
        const lists = await Promise.allSettled(slice.map((c) => this.readMembers(c)));
        for (const [j, c] of slice.entries()) {
          const list = lists[j]!;
          if (list.status === "rejected") {
            unreadable.push({ conversationId: c, error: list.reason });
            continue;
          }
          const set = new Set(list.value);
          out.set(c, set);
          if (!marks[j]!.changed) this.hold(c, set);
        }
      } finally {
        for (const [j, c] of slice.entries()) if (this.reading.get(c) === marks[j]) this.reading.delete(c);
      }
    }
    return { sets: out, unreadable };
  }

  /** Reads these conversations' sets again (for a router whose store does not tell of changes). */
  async refresh(conversationIds: Iterable<string>): Promise<Map<string, ReadonlySet<string>>> {
    const ids = [...new Set(conversationIds)];
    for (const c of ids) this.forget(c);
    return this.load(ids);
  }

  /** The membership changed: read the set again before the next message. */
  forget(conversationId: string): void {
    const mark = this.reading.get(conversationId);
    if (mark) mark.changed = true;
    this.drop(conversationId);
  }

  /**
   * Every membership may have changed unseen (the inbox partitions this process reads moved: another
   * process read the changes meanwhile): read every set again before its next message.
   */
  forgetAll(): void {
    for (const mark of this.reading.values()) mark.changed = true;
    this.sets.clear();
    this.held = 0;
  }

  private drop(conversationId: string): void {
    const set = this.sets.get(conversationId);
    if (!set) return;
    this.sets.delete(conversationId);
    this.held -= set.size;
  }

  private hold(conversationId: string, set: ReadonlySet<string>): void {
    this.drop(conversationId);
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
