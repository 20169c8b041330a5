/**
 * The member lists of recently used conversations, so the send and route of every message do not
 * range-read the members table (one LMDB cursor and a decoded key per member: at 2,000 msgs/s the
 * largest source of the router's allocations).
 *
 * The embedded store is the only writer of its members and runs in this process, so the cache is
 * kept true by forgetting a conversation's list once a change of its members is committed, before
 * the change resolves to its caller and before any listener hears of it. A read racing the commit
 * sees the old list, exactly as an uncached read would.
 *
 * Bounded by the members it holds in all (LRU over conversations): a huge group alone may not fit
 * and is then read each time, as before.
 */
export class MemberLists {
  private readonly lists = new Map<string, readonly string[]>();
  private held = 0;

  constructor(private readonly membersMax: number) {}

  /** A copy of the cached list (callers may sort it), or undefined. */
  get(conversationId: string): string[] | undefined {
    const list = this.lists.get(conversationId);
    if (!list) return undefined;
    this.lists.delete(conversationId);
    this.lists.set(conversationId, list);
    return list.slice();
  }

  set(conversationId: string, members: readonly string[]): void {
    this.forget(conversationId);
    if (members.length > this.membersMax) return;
    this.lists.set(conversationId, members.slice());
    this.held += members.length;
    for (const [id, list] of this.lists) {
      if (this.held <= this.membersMax) break;
      this.lists.delete(id);
      this.held -= list.length;
    }
  }

  forget(conversationId: string): void {
    const list = this.lists.get(conversationId);
    if (!list) return;
    this.lists.delete(conversationId);
    this.held -= list.length;
  }

  /** Members held in all (never above the bound). */
  get size(): number {
    return this.held;
  }
}
