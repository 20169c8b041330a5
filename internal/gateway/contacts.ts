/** Who may watch whose presence: users who share a conversation (docs/protocol.md §4). */
import type { MembershipStore } from "../backends/types.js";
import { directConversationId } from "../conversations/index.js";
import { mapLimited } from "../lib/map-limited.js";

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
  /**
   * The most group ids the held lists may have together, each list counting one more (the oldest
   * lists go first); lists past their lifetime go as soon as another is stored.
   */
  idsMax: number;
  now?: () => number;
}

interface GroupList {
  ids: string[];
  listedAtMs: number;
}

/**
 * Decides who shares a conversation with a user: their direct conversation (one read per target),
 * else one of the user's `groupsScanned` most recent groups, each group asked once about every
 * target still unsettled and the user (one read per 100 of them on Cassandra) and only until all are
 * settled. The user's group list (up to 1,000 reads on Cassandra) is held for a few seconds, shared
 * by the user's connections on this gateway: a client renewing 1,000 watches in ten requests lists
 * it once. A held list may name a group the user has since left (nothing tells the user who was
 * removed): a group counts only if the same read finds the user in it still.
 */
export class ContactCheck {
  /** The held lists, oldest stored first. */
  private readonly lists = new Map<string, GroupList>();
  /** What the held lists count against `idsMax`. */
  private held = 0;
  private readonly now: () => number;

  constructor(
    private readonly membership: Pick<MembershipStore, "isMember" | "membersAmong" | "conversationsOf">,
    private readonly options: ContactCheckOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /**
   * The first of `others` who shares no conversation with `user`, if any. Once `signal` aborts, the
   * check starts no more reads and fails.
   */
  async firstStranger(
    user: string,
    others: readonly string[],
    signal?: AbortSignal,
  ): Promise<string | undefined> {
    const unique = [...new Set(others)];
    if (unique.length === 0) return undefined;
    const direct = await mapLimited(
      unique,
      READS_CONCURRENT,
      (other) => this.membership.isMember(directConversationId(user, other), other),
      signal,
    );
    const remaining = new Set(unique.filter((_, i) => !direct[i]));
    if (remaining.size === 0) return undefined;
    let list = this.cached(user);
    const fromCache = list !== undefined;
    signal?.throwIfAborted();
    list ??= await this.list(user);
    await this.settle(user, list.ids, remaining, signal);
    // A held list may predate a group the user just joined: read it anew (at most once a second)
    // and ask only the groups it did not have.
    if (remaining.size > 0 && fromCache && this.now() - list.listedAtMs >= this.options.groupListRereadMs) {
      const known = new Set(list.ids);
      signal?.throwIfAborted();
      const fresh = await this.list(user);
      await this.settle(
        user,
        fresh.ids.filter((id) => !known.has(id)),
        remaining,
        signal,
      );
    }
    return remaining.values().next().value;
  }

  /** Forgets `user`'s group list (a group change reached them). */
  forget(user: string): void {
    const list = this.lists.get(user);
    if (!list) return;
    this.lists.delete(user);
    this.held -= weight(list);
  }

  /** How many lists are held, and what they count against `idsMax` (for tests). */
  get holding(): { lists: number; weight: number } {
    return { lists: this.lists.size, weight: this.held };
  }

  private cached(user: string): GroupList | undefined {
    const list = this.lists.get(user);
    if (list && this.now() - list.listedAtMs < this.options.groupListTtlMs) return list;
    this.forget(user);
    return undefined;
  }

  private async list(user: string): Promise<GroupList> {
    const listedAtMs = this.now();
    const records = await this.membership.conversationsOf(user, this.options.groupsScanned);
    const list = { ids: records.filter((c) => c.kind === "group").map((c) => c.id), listedAtMs };
    this.forget(user);
    this.lists.set(user, list);
    this.held += weight(list);
    // The oldest first: those past their lifetime, then any while over the bound.
    const now = this.now();
    for (const [u, l] of this.lists) {
      if (this.held <= this.options.idsMax && now - l.listedAtMs < this.options.groupListTtlMs) break;
      this.forget(u);
    }
    return list;
  }

  /**
   * Takes out of `remaining` whoever is a member of one of `groups` (newest first) that `user` is
   * still a member of; stops once none is left.
   */
  private async settle(
    user: string,
    groups: readonly string[],
    remaining: Set<string>,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    for (let i = 0; i < groups.length && remaining.size > 0; i += READS_CONCURRENT) {
      signal?.throwIfAborted();
      const asked = [...remaining, user];
      const found = await Promise.all(
        groups.slice(i, i + READS_CONCURRENT).map((id) => this.membership.membersAmong(id, asked)),
      );
      for (const present of found) {
        if (!present.has(user)) continue; // removed from it since the list was read
        for (const u of present) remaining.delete(u);
      }
    }
  }
}

/** What a held list counts against `idsMax`: its ids, and one for itself. */
const weight = (list: GroupList): number => list.ids.length + 1;
