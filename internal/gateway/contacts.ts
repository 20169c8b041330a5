/** Who may watch whose presence: users who share a conversation (docs/protocol.md §4). */
import type { MembershipStore } from "../backends/types.js";
import { directConversationId } from "../conversations/index.js";

/** Reads of one check in flight at once (direct conversations, then groups). */
const READS_CONCURRENT = 8;

export interface ContactCheckOptions {
  /** How many of the user's most recent conversations count (the protocol's 1,000). */
  groupsScanned: number;
  /** How long a user's listed groups are used again without reading them anew. */
  groupListTtlMs: number;
  /**
   * A list younger than this that does not settle a check is trusted (the target is a stranger)
   * rather than read again: strangers asked for over and over cost one listing a second at most.
   */
  groupListRereadMs: number;
  /** Users whose group lists are held at most (the oldest go first). */
  usersMax: number;
  now?: () => number;
}

interface GroupList {
  ids: string[];
  listedAtMs: number;
}

/**
 * Decides who shares a conversation with a user: their direct conversation (one read per target),
 * else one of the user's `groupsScanned` most recent groups, each group asked once about every
 * target still unsettled (one read per 100 of them on Cassandra) and only until all are settled. The
 * user's group list (up to 1,000 reads on Cassandra) is held for a few seconds, shared by the user's
 * connections on this gateway: a client renewing 1,000 watches in ten requests lists it once.
 */
export class ContactCheck {
  private readonly lists = new Map<string, GroupList>();
  private readonly now: () => number;

  constructor(
    private readonly membership: Pick<MembershipStore, "isMember" | "membersAmong" | "conversationsOf">,
    private readonly options: ContactCheckOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** The first of `others` who shares no conversation with `user`, if any. */
  async firstStranger(user: string, others: readonly string[]): Promise<string | undefined> {
    const unique = [...new Set(others)];
    if (unique.length === 0) return undefined;
    const direct = await mapLimited(unique, (other) =>
      this.membership.isMember(directConversationId(user, other), other),
    );
    const remaining = new Set(unique.filter((_, i) => !direct[i]));
    if (remaining.size === 0) return undefined;
    let list = this.cached(user);
    const fromCache = list !== undefined;
    list ??= await this.list(user);
    await this.settle(list.ids, remaining);
    // A held list may predate a group the user just joined: read it anew (at most once a second)
    // and ask only the groups it did not have.
    if (remaining.size > 0 && fromCache && this.now() - list.listedAtMs >= this.options.groupListRereadMs) {
      const known = new Set(list.ids);
      const fresh = await this.list(user);
      await this.settle(
        fresh.ids.filter((id) => !known.has(id)),
        remaining,
      );
    }
    return remaining.values().next().value;
  }

  /** Forgets `user`'s group list (a group change reached them). */
  forget(user: string): void {
    this.lists.delete(user);
  }

  private cached(user: string): GroupList | undefined {
    const list = this.lists.get(user);
    if (list && this.now() - list.listedAtMs < this.options.groupListTtlMs) return list;
    if (list) this.lists.delete(user);
    return undefined;
  }

  private async list(user: string): Promise<GroupList> {
    const listedAtMs = this.now();
    const records = await this.membership.conversationsOf(user, this.options.groupsScanned);
    const list = { ids: records.filter((c) => c.kind === "group").map((c) => c.id), listedAtMs };
    this.lists.delete(user);
    this.lists.set(user, list);
    if (this.lists.size > this.options.usersMax) this.lists.delete(this.lists.keys().next().value as string);
    return list;
  }

  /** Takes out of `remaining` whoever is a member of one of `groups` (newest first); stops once empty. */
  private async settle(groups: readonly string[], remaining: Set<string>): Promise<void> {
    for (let i = 0; i < groups.length && remaining.size > 0; i += READS_CONCURRENT) {
      const asked = [...remaining];
      const found = await Promise.all(
        groups.slice(i, i + READS_CONCURRENT).map((id) => this.membership.membersAmong(id, asked)),
      );
      for (const present of found) for (const u of present) remaining.delete(u);
    }
  }
}

/** `fn` over `items`, at most READS_CONCURRENT at once, results in order. */
async function mapLimited<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(READS_CONCURRENT, items.length) }, worker));
  return out;
}
