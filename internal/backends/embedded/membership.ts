/**
 * The embedded membership store: conversations, their members and roles, and each user's
 * conversations.
 *
 * A message goes to the members as of its seq (ADR 0012), and the router reads the members when it
 * routes, which may be a moment after the message was acknowledged: so an addition or a removal
 * first waits (`beforeChange`: the log's `untilAddressed`) until the router has routed every message
 * appended before it, and a message sent before the change is never given to a member added by it,
 * nor withheld from one removed by it.
 */
import type { Database } from "lmdb";
import { errors } from "../../lib/errors.js";
import { KeyedMutex } from "../../lib/keyed-mutex.js";
import type {
  ConversationRecord,
  GroupChange,
  MemberEntry,
  MemberRole,
  MembershipStore,
  NewConversation,
  RosterPage,
} from "../types.js";
import { newConversationRecord } from "../types.js";
import { MemberLists } from "./member-lists.js";
import { type Guard, KEY_END, type Key } from "./store.js";

/**
 * A user's conversations newest first (`user_conversations_by_time`): key [user, 0 - createdAtMs, id],
 * so a forward read gives the newest first and, among those created in the same millisecond, ids in
 * order (as Cassandra's `conversations_by_user` does). `0 -`, not `-`: never -0, a key of its own.
 */
export function newestFirstKey(user: string, createdAtMs: number, conversationId: string): Key {
  return [user, 0 - createdAtMs, conversationId];
}

/** Index entries written per commit while the index by creation time is built (a few MB of pages). */
const INDEX_BUILD_CHUNK = 50_000;

/**
 * Builds the index by creation time from the index by id (opening a data dir of a format before 2,
 * which had only that one): emptied first, since a build cut short and a build before that wrote
 * into it may have been followed by changes that kept only the other. Returns the entries written.
 */
export function buildNewestFirstIndex(
  byUser: Database<number, Key>,
  byUserNewest: Database<1, Key>,
  chunkEntries = INDEX_BUILD_CHUNK,
): number {
  byUserNewest.clearSync();
  let built = 0;
  // Each chunk from the last key of the one before (its entry written again: harmless).
  let start: Key | undefined;
  for (;;) {
    let read = 0;
    let last: Key | undefined;
    byUserNewest.transactionSync(() => {
      for (const { key, value } of byUser.getRange({
        ...(start ? { start } : {}),
        limit: chunkEntries,
      })) {
        const [user, id] = key as [string, string];
        byUserNewest.put(newestFirstKey(user, value, id), 1);
        last = key;
        read++;
      }
    });
    built += start === undefined ? read : Math.max(0, read - 1);
    if (read < chunkEntries) return built;
    start = last;
  }
}

/** Members the member-list cache holds in all (a few MB of user ids). */
const MEMBER_LISTS_MEMBERS_MAX = 100_000;

/**
 * A record stored before group policies, delivery models and versions existed reads as "everyone
 * may", push, version 0.
 */
function withDefaults(record: ConversationRecord | undefined): ConversationRecord | undefined {
  if (!record || (record.postPolicy && record.addPolicy && record.delivery && record.version !== undefined))
    return record;
  return {
    ...record,
    postPolicy: record.postPolicy ?? "everyone",
    addPolicy: record.addPolicy ?? "everyone",
    delivery: record.delivery ?? "push",
    version: record.version ?? 0,
  };
}

/**
 * Conversations (`conversations`), members with their join time (`members`), the roles other than
 * "member" (`member_roles`: admins; the owner is the record's) and each user's conversations.
 */
export class EmbeddedMembership implements MembershipStore {
  private readonly mutex = new KeyedMutex();
  private readonly listeners = new Set<(conversationId: string) => void>();
  private readonly memberLists = new MemberLists(MEMBER_LISTS_MEMBERS_MAX);

  constructor(
    private readonly conversations: Database<ConversationRecord, Key>,
    private readonly membersDb: Database<number, Key>,
    private readonly roles: Database<"admin", Key>,
    private readonly byUser: Database<number, Key>,
    private readonly byUserNewest: Database<1, Key>,
    private readonly guard: Guard,
    private readonly beforeChange: (conversationId: string) => Promise<unknown> = async () => undefined,
  ) {}

  createConversation(record: NewConversation, members: string[]) {
    return this.mutex.run(record.id, async () => {
      const existing = this.record(record.id);
      if (existing) return { record: existing, created: false };
      const unique = [...new Set(members)];
      const stored = newConversationRecord(record, unique.length);
      await this.guard(() =>
        this.conversations.batch(() => {
          this.conversations.put(record.id, stored);
          for (const user of unique) {
            this.membersDb.put([record.id, user], record.createdAtMs);
            this.byUser.put([user, record.id], record.createdAtMs);
            this.byUserNewest.put(newestFirstKey(user, record.createdAtMs, record.id), 1);
          }
        }),
      );
      this.changed(record.id);
      return { record: stored, created: true };
    });
  }

  async getConversation(id: string) {
    return this.record(id);
  }

  addMembers(id: string, users: string[], membersMax: number, pullAbove = Number.POSITIVE_INFINITY) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      const fresh = [...new Set(users)].filter((u) => !this.membersDb.doesExist([id, u]));
      if (record.memberCount + fresh.length > membersMax) {
        throw errors.exhausted(
          "GROUP_FULL",
          `group ${id} would have ${record.memberCount + fresh.length} members; the limit is ${membersMax}`,
        );
      }
      if (fresh.length === 0) return record;
      await this.beforeChange(id);
      const memberCount = record.memberCount + fresh.length;
      const delivery = memberCount > pullAbove ? "pull" : record.delivery;
      const updated = { ...record, memberCount, delivery, version: record.version + 1 };
      const now = Date.now();
      await this.guard(() =>
        this.conversations.batch(() => {
          this.conversations.put(id, updated);
          for (const user of fresh) {
            this.membersDb.put([id, user], now);
            this.byUser.put([user, id], record.createdAtMs);
            this.byUserNewest.put(newestFirstKey(user, record.createdAtMs, id), 1);
          }
        }),
      );
      this.changed(id);
      return updated;
    });
  }

  removeMember(id: string, user: string) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      if (!this.membersDb.doesExist([id, user]))
        throw errors.denied("NOT_MEMBER", `${user} is not a member of ${id}`);
      await this.beforeChange(id);
      const updated = {
        ...record,
        memberCount: record.memberCount - 1,
        owner: record.owner === user ? "" : record.owner,
        version: record.version + 1,
      };
      await this.guard(() =>
        this.conversations.batch(() => {
          this.conversations.put(id, updated);
          this.membersDb.remove([id, user]);
          this.roles.remove([id, user]);
          this.byUser.remove([user, id]);
          this.byUserNewest.remove(newestFirstKey(user, record.createdAtMs, id));
        }),
      );
      this.changed(id);
      return updated;
    });
  }

  setRole(id: string, user: string, role: MemberRole) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      if (!this.membersDb.doesExist([id, user]))
        throw errors.notFound("USER_NOT_MEMBER", `${user} is not a member of ${id}`);
      const former = record.owner;
      const owner = role === "owner" ? user : former === user ? "" : former;
      const updated = { ...record, owner, version: record.version + 1 };
      await this.guard(() =>
        this.conversations.batch(() => {
          this.conversations.put(id, updated);
          if (role === "admin") this.roles.put([id, user], "admin");
          else this.roles.remove([id, user]);
          // The owner handing over stays on as an admin.
          if (role === "owner" && former !== "" && former !== user && this.membersDb.doesExist([id, former]))
            this.roles.put([id, former], "admin");
        }),
      );
      return updated;
    });
  }

  async memberOf(id: string, user: string) {
    const record = this.record(id);
    if (!record || !this.membersDb.doesExist([id, user])) return undefined;
    return { record, role: this.roleOf(record, user) };
  }

  updateGroup(id: string, change: GroupChange) {
    return this.mutex.run(id, async () => {
      const record = this.record(id);
      if (record?.kind !== "group") throw errors.notFound("GROUP_NOT_FOUND", `group ${id} does not exist`);
      const updated = { ...record, ...change, version: record.version + 1 };
      await this.guard(() => this.conversations.put(id, updated));
      return updated;
    });
  }

  async isMember(id: string, user: string) {
    return this.membersDb.doesExist([id, user]);
  }

  async membersAmong(id: string, users: readonly string[]) {
    const present = new Set<string>();
    const record = this.record(id);
    if (!record) return present;
    if (record.memberCount < users.length) {
      // Fewer members than users asked about: the members are the shorter read.
      const asked = new Set(users);
      for (const key of this.membersDb.getKeys({ start: [id, ""], end: [id, KEY_END] })) {
        const user = (key as [string, string])[1];
        if (asked.has(user)) present.add(user);
      }
    } else for (const user of users) if (this.membersDb.doesExist([id, user])) present.add(user);
    return present;
  }

  async members(id: string) {
    const cached = this.memberLists.get(id);
    if (cached) return cached;
    const out: string[] = [];
    for (const key of this.membersDb.getKeys({ start: [id, ""], end: [id, KEY_END] }))
      out.push((key as [string, string])[1]);
    this.memberLists.set(id, out);
    return out;
  }

  async roster(id: string, page: { after?: string; limit: number }): Promise<RosterPage> {
    const record = this.record(id);
    if (!record) return { members: [], more: false };
    const members: MemberEntry[] = [];
    let more = false;
    const after = page.after;
    // One more than the page (and the `after` key itself, if still a member): whether more follow.
    const keys = this.membersDb.getKeys({
      start: [id, after ?? ""],
      end: [id, KEY_END],
      limit: page.limit + 2,
    });
    for (const key of keys) {
      const userId = (key as [string, string])[1];
      if (userId === after) continue;
      if (members.length === page.limit) {
        more = true;
        break;
      }
      members.push({ userId, role: this.roleOf(record, userId) });
    }
    return { members, more };
  }

  /**
   * The newest `limit` of the user's conversations, read in that order from the index by creation
   * time: only those returned are read. (Before data format 2 the index by id was read whole and cut
   * to the newest: for a user in 100,000 conversations, ~76 ms of the event loop per listing.)
   */
  async conversationsOf(user: string, limit: number) {
    const out: ConversationRecord[] = [];
    if (limit <= 0) return out;
    for (const key of this.byUserNewest.getKeys({
      start: [user, -Number.MAX_SAFE_INTEGER],
      end: [user, 1],
    })) {
      // Written in the commit that stored its record (records are never removed): skipped, not
      // refused, should one be missing all the same.
      const record = this.record((key as [string, number, string])[2]);
      if (!record) continue;
      out.push(record);
      if (out.length === limit) break;
    }
    return out;
  }

  watch(listener: (conversationId: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {}

  /** After a change of the members is committed: the cached list goes first, then the listeners hear. */
  private changed(conversationId: string): void {
    this.memberLists.forget(conversationId);
    for (const listener of this.listeners) listener(conversationId);
  }

  private record(id: string): ConversationRecord | undefined {
    return withDefaults(this.conversations.get(id));
  }

  private existing(id: string): ConversationRecord {
    const record = this.record(id);
    if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `conversation ${id} does not exist`);
    return record;
  }

  private roleOf(record: ConversationRecord, user: string): MemberRole {
    if (record.owner !== "" && record.owner === user) return "owner";
    return this.roles.get([record.id, user]) ?? "member";
  }
}
