/**
 * MembershipStore over `members_by_conversation` (the conversation row as static columns, one clustering
 * row per member) and `conversations_by_user` (a derived index).
 *
 * Every change to a conversation partition is one conditional batch on that partition (schema.ts, v2):
 * - create: INSERT the conversation row IF NOT EXISTS + INSERT each member IF NOT EXISTS;
 * - add:    UPDATE member_count = n + k IF member_count = n + INSERT each new member IF NOT EXISTS;
 * - remove: UPDATE member_count = n - 1 IF member_count = n + DELETE the member IF EXISTS (+ clear the
 *           owner when it is the owner who goes);
 * - role:   UPDATE the member's role IF EXISTS (+ UPDATE owner IF owner = previous, for a transfer);
 * - group:  UPDATE name, open and policies IF kind = 'group';
 * and each change but the create also sets `version` = v + 1 IF version = v (the version it read), so
 * every change is made on the state it read: two changes never share a version, a change made in
 * another process meanwhile makes this one read again and re-apply (an update of some fields never
 * writes back others' old values), and the record a change returns is exactly the state it stored.
 * So the member limit holds under concurrent adds from any number of processes: of two adds that read the
 * same count only one applies, the other re-reads and re-checks the limit; and the count always equals
 * the number of member rows. Within a process a per-conversation mutex keeps our own calls from racing
 * each other (Paxos contention costs round trips and timeouts); across processes the CAS decides.
 *
 * Membership as of a seq (ADR 0012): an added member's row is written with `since_seq` -1 (a
 * conversation's first members with 0: from the start); a removal first writes a
 * `departures_by_conversation` row for the membership it ends (its `since_seq` copied, `until_seq`
 * -1). The sequencer gives each -1 its seq when it meets the change's announcement (`boundChanges`,
 * conditional batches of 100 rows per table) and reads them with `membershipSeqs`, to address each
 * message to the members as of its seq.
 *
 * `conversations_by_user` rows are written after the batch applied. If a process dies in between, a row
 * is missing until the next create/add naming that user re-writes it (both re-write the index for every
 * user they report as a member), and a removed member's row may linger: conversationsOf() checks each
 * listed conversation's member row, which is authoritative, and drops stale index rows.
 */
import { errors, invariantViolated } from "../../lib/errors.js";
import type {
  ChangeBound,
  ConversationKindName,
  ConversationRecord,
  DepartureBound,
  GroupChange,
  GroupPolicy,
  MemberBound,
  MemberEntry,
  MemberRole,
  MembershipAsOfSeqs,
  MembershipSeqStore,
  MembershipStore,
  NewConversation,
  RosterPage,
} from "../types.js";
import { newConversationRecord } from "../types.js";
import {
  backoff,
  chunks,
  contended,
  isUnavailable,
  KeyedMutex,
  Limiter,
  optionalNumber,
  type Row,
  type Session,
  toNumber,
  toText,
} from "./session.js";

const CAS_ATTEMPTS_MAX = 24;
const IN_MAX = 100;

/** A change the sequencer has not met yet (its seq column). */
const UNBOUND = -1;

type Statement = { query: string; params: unknown[] };

/** One attempt of a conditional change (CassandraMembershipStore.conditionalChange). */
interface ChangeAttempt {
  /**
   * Writes the attempt's conditional batch; once it applied, runs `then`, whose result is the change's.
   * Undefined when the batch lost to another change or its outcome is unknown.
   */
  write(
    statements: Statement[],
    then: () => ConversationRecord | Promise<ConversationRecord>,
  ): Promise<ConversationRecord | undefined>;
  /** Whether an earlier attempt's outcome was unknown: it may have applied after all. */
  earlierUnknown: boolean;
}

export class CassandraMembershipStore implements MembershipStore, MembershipSeqStore {
  private readonly q: ReturnType<typeof statements>;
  private readonly mutex = new KeyedMutex();
  private readonly limiter = new Limiter(32);
  /** Conditional batches of changes (conditionalChange) that lost a race or timed out (then retried). */
  readonly stats = { casConflicts: 0, casUnknown: 0 };

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  createConversation(
    record: NewConversation,
    members: string[],
  ): Promise<{ record: ConversationRecord; created: boolean }> {
    return this.mutex.run(record.id, async () => {
      const unique = [...new Set(members)];
      const stored = newConversationRecord(record, unique.length);
      const createdAt = new Date(record.createdAtMs);
      let lastError: unknown;
      for (let attempt = 1; attempt <= CAS_ATTEMPTS_MAX; attempt++) {
        // A timed-out attempt may have applied: whoever reads the row afterwards cannot tell whether it
        // was us, so an earlier attempt of ours that timed out counts as "maybe created" below.
        const existing = await this.readConversation(record.id);
        if (existing) {
          const created = lastError !== undefined && sameConversation(existing, stored);
          await this.indexPresent(existing, unique);
          return { record: existing, created };
        }
        try {
          const result = await this.s.batch(
            "members_by_conversation: create conversation (conditional batch)",
            [
              {
                query: this.q.insertConversation,
                params: [
                  record.id,
                  record.kind,
                  record.name,
                  record.owner,
                  record.open,
                  createdAt,
                  unique.length,
                  stored.postPolicy,
                  stored.addPolicy,
                  stored.delivery,
                ],
              },
              // Members from the start (seq 0): no message of a conversation comes before it exists.
              ...unique.map((user) => ({
                query: this.q.insertFirstMember,
                params: [record.id, user, createdAt],
              })),
            ],
            { idempotent: false, logged: true },
          );
          if (result.wasApplied()) {
            await this.index(record.id, record.createdAtMs, unique);
            return { record: stored, created: true };
          }
        } catch (err) {
          if (!isUnavailable(err)) throw err;
          lastError = err;
          await backoff(attempt);
        }
      }
      throw contended("members_by_conversation: create conversation", CAS_ATTEMPTS_MAX, lastError);
    });
  }

  async getConversation(id: string): Promise<ConversationRecord | undefined> {
    return this.readConversation(id);
  }

  /**
   * One conditional update of the static columns (conditional like every other write of the partition:
   * plain writes mixed with Paxos ones may be ordered unlike their acknowledgements). Setting the same
   * values again is harmless, so a timed-out attempt is retried.
   */
  updateGroup(id: string, change: GroupChange): Promise<ConversationRecord> {
    return this.conditionalChange(id, "members_by_conversation: update group", async ({ write }) => {
      const record = await this.readConversation(id);
      if (record?.kind !== "group") throw errors.notFound("GROUP_NOT_FOUND", `group ${id} does not exist`);
      const updated = { ...record, ...change, version: record.version + 1 };
      return write(
        [
          {
            query: this.q.updateGroup,
            params: [updated.name, updated.open, updated.postPolicy, updated.addPolicy, id],
          },
          this.nextVersion(record),
        ],
        () => updated,
      );
    });
  }

  addMembers(
    id: string,
    users: string[],
    membersMax: number,
    pullAbove = Number.POSITIVE_INFINITY,
  ): Promise<ConversationRecord> {
    const unique = [...new Set(users)];
    return this.conditionalChange(id, "members_by_conversation: add members", async ({ write }) => {
      const record = await this.readConversation(id);
      if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `conversation ${id} does not exist`);
      const present = await this.presentAmong(id, unique);
      const fresh = unique.filter((u) => !present.has(u));
      if (record.memberCount + fresh.length > membersMax) {
        throw errors.exhausted(
          "GROUP_FULL",
          `group ${id} would have ${record.memberCount + fresh.length} members; the limit is ${membersMax}`,
        );
      }
      if (fresh.length === 0) {
        await this.index(id, record.createdAtMs, unique);
        return record;
      }
      const now = new Date();
      const memberCount = record.memberCount + fresh.length;
      const switches = record.delivery === "push" && memberCount > pullAbove;
      // An outcome unknown does no harm: the next attempt's fresh read shows whether the users are
      // members now.
      return write(
        [
          { query: this.q.casCount, params: [memberCount, id, record.memberCount] },
          ...fresh.map((user) => ({ query: this.q.insertMember, params: [id, user, now] })),
          ...(switches ? [{ query: this.q.setDelivery, params: ["pull", id] }] : []),
          this.nextVersion(record),
        ],
        async () => {
          await this.index(id, record.createdAtMs, unique);
          const delivery = switches ? "pull" : record.delivery;
          return { ...record, memberCount, delivery, version: record.version + 1 };
        },
      );
    });
  }

  removeMember(id: string, user: string): Promise<ConversationRecord> {
    return this.conditionalChange(
      id,
      "members_by_conversation: remove member",
      async ({ write, earlierUnknown }) => {
        const record = await this.readConversation(id);
        if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `conversation ${id} does not exist`);
        const member = (
          await this.s.execute("members_by_conversation: a member's seq", this.q.memberSeq, [id, user], {
            idempotent: true,
          })
        ).first();
        if (!member) {
          // A timed-out attempt of ours may have removed the member after all.
          if (earlierUnknown) {
            await this.unindex(id, record.createdAtMs, user);
            // It may have applied after this attempt read the record: the state after it is read again.
            return (await this.readConversation(id)) ?? record;
          }
          throw errors.denied("NOT_MEMBER", `${user} is not a member of ${id}`);
        }
        // Before the removal: from the moment it applies, the membership it ends counts only from its
        // start's bound up to the bound the sequencer gives its end (for a message handled again after
        // a crash), never past it.
        await this.s.execute(
          "departures_by_conversation: record a departure",
          this.q.insertDeparture,
          [
            id,
            new Date(),
            user,
            member.get("joined_at"),
            // null: a member row written before seqs were kept, a member from the start.
            optionalNumber(member.get("since_seq"), "members_by_conversation.since_seq") ?? 0,
          ],
          { idempotent: true },
        );
        const owned = record.owner !== "" && record.owner === user;
        return write(
          [
            { query: this.q.casCount, params: [record.memberCount - 1, id, record.memberCount] },
            { query: this.q.deleteMember, params: [id, user] },
            ...(owned ? [{ query: this.q.setOwner, params: ["", id] }] : []),
            this.nextVersion(record),
          ],
          async () => {
            await this.unindex(id, record.createdAtMs, user);
            const owner = owned ? "" : record.owner;
            return { ...record, memberCount: record.memberCount - 1, owner, version: record.version + 1 };
          },
        );
      },
    );
  }

  setRole(id: string, user: string, role: MemberRole): Promise<ConversationRecord> {
    return this.conditionalChange(id, "members_by_conversation: set role", async ({ write }) => {
      const record = await this.readConversation(id);
      if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `conversation ${id} does not exist`);
      if (!(await this.isMember(id, user)))
        throw errors.notFound("USER_NOT_MEMBER", `${user} is not a member of ${id}`);
      const former = record.owner;
      const owner = role === "owner" ? user : former === user ? "" : former;
      // Each member row is updated only if it still exists (a plain update would re-create a row
      // removed meanwhile); the owner only if nobody changed it since it was read.
      const statements: Statement[] = [
        { query: this.q.setRoleIfMember, params: [role === "admin" ? "admin" : null, id, user] },
      ];
      if (owner !== former) statements.push({ query: this.q.setOwnerIf, params: [owner, id, former] });
      if (role === "owner" && former !== "" && former !== user && (await this.isMember(id, former)))
        statements.push({ query: this.q.setRoleIfMember, params: ["admin", id, former] });
      statements.push(this.nextVersion(record));
      // After an outcome unknown, setting the same role again is harmless: the next attempt re-reads
      // and re-applies.
      return write(statements, () => ({ ...record, owner, version: record.version + 1 }));
    });
  }

  /**
   * A change of conversation `id` (`what`), made on the state it read, one at a time in this process:
   * `attempt` reads the state, checks it and writes one conditional batch on it with `write`. Once the
   * batch applied, `write`'s `then` runs and its result is the change's; when it did not (another change
   * came first) or its outcome is unknown (Cassandra unavailable, in the batch or in `then`), the
   * attempt returns undefined and the change is tried again after a backoff, on a fresh read.
   */
  private conditionalChange(
    id: string,
    what: string,
    attempt: (a: ChangeAttempt) => Promise<ConversationRecord | undefined>,
  ): Promise<ConversationRecord> {
    return this.mutex.run(id, async () => {
      let lastError: unknown;
      const write: ChangeAttempt["write"] = async (statements, then) => {
        try {
          const result = await this.s.batch(`${what} (conditional batch)`, statements, {
            idempotent: false,
            logged: true,
          });
          if (result.wasApplied()) return await then();
          this.stats.casConflicts++;
        } catch (err) {
          if (!isUnavailable(err)) throw err;
          this.stats.casUnknown++;
          lastError = err;
        }
        return undefined;
      };
      for (let n = 1; n <= CAS_ATTEMPTS_MAX; n++) {
        const changed = await attempt({ write, earlierUnknown: lastError !== undefined });
        if (changed) return changed;
        await backoff(n);
      }
      throw contended(what, CAS_ATTEMPTS_MAX, lastError);
    });
  }

  /** The statement of a change's batch that makes it one on the state it read (`record`). */
  private nextVersion(record: ConversationRecord): Statement {
    return record.version === 0
      ? { query: this.q.firstVersion, params: [record.id] }
      : { query: this.q.nextVersion, params: [record.version + 1, record.id, record.version] };
  }

  async memberOf(
    id: string,
    user: string,
  ): Promise<{ record: ConversationRecord; role: MemberRole } | undefined> {
    const result = await this.s.execute(
      "members_by_conversation: conversation of member",
      this.q.conversationOfMember,
      [id, user],
      { idempotent: true },
    );
    const row = result.first();
    if (!row) return undefined;
    const record = decodeConversation(id, row);
    return { record, role: roleOf(record, user, row.get("role")) };
  }

  async roster(id: string, page: { after?: string; limit: number }): Promise<RosterPage> {
    // Rows come in clustering order (user_id ascending); user ids are ASCII, so it is JavaScript's.
    // One more than the page: whether more follow. No user id is empty, so "" starts at the first.
    const rows = await this.s.all("members_by_conversation: a page of members with roles", this.q.roster, [
      id,
      page.after ?? "",
      page.limit + 1,
    ]);
    const members: MemberEntry[] = [];
    let more = false;
    for (const row of rows) {
      const userId = row.get("user_id");
      if (typeof userId !== "string") continue; // a static-only row (no members)
      if (members.length === page.limit) {
        more = true;
        break;
      }
      const owner = (row.get("owner") as string | null) ?? "";
      members.push({
        userId,
        role: userId === owner && owner !== "" ? "owner" : row.get("role") === "admin" ? "admin" : "member",
      });
    }
    return { members, more };
  }

  async isMember(id: string, user: string): Promise<boolean> {
    const result = await this.s.execute("members_by_conversation: is member", this.q.member, [id, user], {
      idempotent: true,
    });
    return result.rowLength > 0;
  }

  /** One `IN` read per IN_MAX users (members_by_conversation's clustering key). */
  membersAmong(id: string, users: readonly string[]): Promise<Set<string>> {
    return this.presentAmong(id, [...new Set(users)]);
  }

  async members(id: string): Promise<string[]> {
    const rows = await this.s.all("members_by_conversation: list members", this.q.members, [id]);
    const out: string[] = [];
    for (const row of rows) {
      const user = row.get("user_id");
      if (typeof user === "string") out.push(user); // a static-only row (no members) has a null user
    }
    return out;
  }

  async membershipSeqs(id: string, departedSinceMs = 0): Promise<MembershipAsOfSeqs> {
    const [memberRows, departedRows] = await Promise.all([
      this.s.all("members_by_conversation: members with their seqs", this.q.memberSeqs, [id]),
      // A direct conversation's members never change: it has no departures.
      id.startsWith("dm:")
        ? Promise.resolve([])
        : this.s.all("departures_by_conversation: departures with their seqs", this.q.departures, [
            id,
            new Date(departedSinceMs),
          ]),
    ]);
    const change = (row: Row, seqColumn: string, atColumn: string): ChangeBound | undefined => {
      const seq = optionalNumber(row.get(seqColumn), seqColumn);
      const atMs = optionalNumber(row.get(atColumn), atColumn);
      if (seq === undefined || atMs === undefined) return undefined;
      return { seq: seq === UNBOUND ? undefined : seq, changedAtMs: atMs };
    };
    const members: MemberBound[] = [];
    for (const row of memberRows) {
      const user = row.get("user_id");
      if (typeof user !== "string") continue; // a static-only row (no members) has a null user
      const joinedAtMs = optionalNumber(row.get("joined_at"), "joined_at") ?? 0;
      // A null seq: a member row written before seqs were kept, a member from the start.
      members.push({
        user,
        joined: change(row, "since_seq", "joined_at") ?? { seq: 0, changedAtMs: joinedAtMs },
      });
    }
    const departed: DepartureBound[] = [];
    for (const row of departedRows) {
      const joined = change(row, "since_seq", "joined_at");
      const left = change(row, "until_seq", "departed_at");
      // A cell missing: what a row's expiry left over (its cells were written at different times).
      if (joined && left)
        departed.push({ user: toText(row.get("user_id"), "departures.user_id"), joined, left });
    }
    return { members, departed };
  }

  /**
   * Conditional on each change being still unbound: a plain update could re-create a row deleted
   * meanwhile. Retried with a fresh read until nothing unbound at or before `atMs` is left.
   */
  async boundChanges(
    id: string,
    atMs: number,
    head: number,
    departedSinceMs = 0,
  ): Promise<MembershipAsOfSeqs> {
    const due = (c: ChangeBound) => c.seq === undefined && c.changedAtMs <= atMs;
    const bind = (c: ChangeBound): ChangeBound => (due(c) ? { ...c, seq: head } : c);
    for (let attempt = 1; attempt <= CAS_ATTEMPTS_MAX; attempt++) {
      const now = await this.membershipSeqs(id, departedSinceMs);
      const members = now.members.filter((m) => due(m.joined));
      const departed = now.departed.filter((d) => due(d.joined) || due(d.left));
      if (members.length === 0 && departed.length === 0) return now;
      const batches = [
        ...chunks(members, IN_MAX).map((part) =>
          part.map((m) => ({
            query: this.q.boundMember,
            params: [head, id, m.user, new Date(m.joined.changedAtMs)],
          })),
        ),
        ...chunks(departed, IN_MAX).map((part) =>
          part.map((d) => {
            const key = [id, new Date(d.left.changedAtMs), d.user];
            if (due(d.joined) && due(d.left))
              return { query: this.q.boundDeparture, params: [head, head, ...key] };
            if (due(d.joined)) return { query: this.q.boundDepartureStart, params: [head, ...key] };
            return { query: this.q.boundDepartureEnd, params: [head, ...key] };
          }),
        ),
      ];
      let applied = 0;
      try {
        for (const statements of batches) {
          const result = await this.s.batch(
            "membership: bound changes to a seq (conditional batch)",
            statements,
            { idempotent: false, logged: true },
          );
          if (result.wasApplied()) applied++;
          else this.stats.casConflicts++;
        }
      } catch (err) {
        // Outcome unknown: the next read shows what is bound.
        if (!isUnavailable(err)) throw err;
        this.stats.casUnknown++;
      }
      if (applied === batches.length) {
        return {
          members: now.members.map((m) => ({ ...m, joined: bind(m.joined) })),
          departed: now.departed.map((d) => ({ ...d, joined: bind(d.joined), left: bind(d.left) })),
        };
      }
      await backoff(attempt);
    }
    throw contended("membership: bound changes to a seq", CAS_ATTEMPTS_MAX, undefined);
  }

  async conversationsOf(user: string, limit: number): Promise<ConversationRecord[]> {
    const out: ConversationRecord[] = [];
    if (limit <= 0) return out;
    const pageSize = Math.min(Math.max(limit, 10), 500);
    let pageState: string | undefined;
    do {
      const call: { idempotent: boolean; fetchSize: number; pageState?: string } = {
        idempotent: true,
        fetchSize: pageSize,
      };
      if (pageState !== undefined) call.pageState = pageState;
      const page = await this.s.execute("conversations_by_user: list", this.q.conversationsOf, [user], call);
      const listed = page.rows.map((r) => ({
        id: toText(r.get("conversation_id"), "conversations_by_user.conversation_id"),
        createdAtMs: toNumber(r.get("created_at"), "conversations_by_user.created_at"),
      }));
      const checked = await this.limiter.map(listed, async (entry) => {
        const result = await this.s.execute(
          "members_by_conversation: conversation of member",
          this.q.conversationOfMember,
          [entry.id, user],
          { idempotent: true },
        );
        const row = result.first();
        if (row) return decodeConversation(entry.id, row);
        // Stale index row (the member was removed, or the remove's index delete is still to come).
        return undefined;
      });
      for (const record of checked) {
        if (record && out.length < limit) out.push(record);
      }
      pageState = page.pageState ?? undefined;
    } while (pageState && out.length < limit);
    return out;
  }

  async close(): Promise<void> {}

  private async readConversation(id: string): Promise<ConversationRecord | undefined> {
    const result = await this.s.execute(
      "members_by_conversation: read conversation",
      this.q.conversation,
      [id],
      {
        idempotent: true,
      },
    );
    const row = result.first();
    if (!row || row.get("kind") === null || row.get("kind") === undefined) return undefined;
    return decodeConversation(id, row);
  }

  private async presentAmong(id: string, users: string[]): Promise<Set<string>> {
    const present = new Set<string>();
    for (const part of chunks(users, IN_MAX)) {
      const result = await this.s.execute(
        "members_by_conversation: which are members",
        this.q.membersIn,
        [id, part],
        {
          idempotent: true,
          fetchSize: IN_MAX + 1,
        },
      );
      for (const row of result.rows)
        present.add(toText(row.get("user_id"), "members_by_conversation.user_id"));
    }
    return present;
  }

  /** Re-writes the index rows of those of `users` that are members (repairs an interrupted write). */
  private async indexPresent(record: ConversationRecord, users: string[]): Promise<void> {
    const present = await this.presentAmong(record.id, users);
    await this.index(
      record.id,
      record.createdAtMs,
      users.filter((u) => present.has(u)),
    );
  }

  private async index(id: string, createdAtMs: number, users: string[]): Promise<void> {
    const createdAt = new Date(createdAtMs);
    await this.limiter.map(users, (user) =>
      this.s.execute("conversations_by_user: insert", this.q.indexInsert, [user, createdAt, id], {
        idempotent: true,
      }),
    );
  }

  private async unindex(id: string, createdAtMs: number, user: string): Promise<void> {
    await this.s.execute(
      "conversations_by_user: delete",
      this.q.indexDelete,
      [user, new Date(createdAtMs), id],
      {
        idempotent: true,
      },
    );
  }
}

function sameConversation(a: ConversationRecord, b: ConversationRecord): boolean {
  return (
    a.kind === b.kind &&
    a.name === b.name &&
    a.owner === b.owner &&
    a.open === b.open &&
    a.createdAtMs === b.createdAtMs
  );
}

const CONVERSATION_COLUMNS =
  "kind, name, owner, open, created_at, member_count, post_policy, add_policy, delivery, version";

function roleOf(record: ConversationRecord, user: string, stored: unknown): MemberRole {
  if (record.owner !== "" && record.owner === user) return "owner";
  return stored === "admin" ? "admin" : "member";
}

/** null (a conversation stored before policies existed, or a direct one): everyone. */
function policy(value: unknown, column: string): GroupPolicy {
  if (value === null || value === undefined || value === "everyone") return "everyone";
  if (value === "admins") return "admins";
  throw invariantViolated(`members_by_conversation.${column} is ${String(value)}`);
}

function decodeConversation(id: string, row: Row): ConversationRecord {
  const kind = toText(row.get("kind"), "members_by_conversation.kind");
  if (kind !== "direct" && kind !== "group") throw invariantViolated(`conversation ${id} has kind ${kind}`);
  return {
    id,
    kind: kind satisfies ConversationKindName,
    name: toText(row.get("name"), "members_by_conversation.name"),
    owner: toText(row.get("owner"), "members_by_conversation.owner"),
    open: row.get("open") === true,
    createdAtMs: toNumber(row.get("created_at"), "members_by_conversation.created_at"),
    memberCount: optionalNumber(row.get("member_count"), "members_by_conversation.member_count") ?? 0,
    postPolicy: policy(row.get("post_policy"), "post_policy"),
    addPolicy: policy(row.get("add_policy"), "add_policy"),
    delivery: row.get("delivery") === "pull" ? "pull" : "push",
    // null: stored before versions were kept, and not changed since.
    version: optionalNumber(row.get("version"), "members_by_conversation.version") ?? 0,
  };
}

function statements(s: Session) {
  const members = s.table("members_by_conversation");
  const byUser = s.table("conversations_by_user");
  const departures = s.table("departures_by_conversation");
  return {
    conversation: `SELECT ${CONVERSATION_COLUMNS} FROM ${members} WHERE conversation_id = ? LIMIT 1`,
    conversationOfMember:
      `SELECT ${CONVERSATION_COLUMNS}, user_id, role FROM ${members} ` +
      "WHERE conversation_id = ? AND user_id = ?",
    member: `SELECT user_id FROM ${members} WHERE conversation_id = ? AND user_id = ?`,
    members: `SELECT user_id FROM ${members} WHERE conversation_id = ?`,
    roster: `SELECT owner, user_id, role FROM ${members} WHERE conversation_id = ? AND user_id > ? LIMIT ?`,
    membersIn: `SELECT user_id FROM ${members} WHERE conversation_id = ? AND user_id IN ?`,
    insertConversation:
      `INSERT INTO ${members} (conversation_id, kind, name, owner, open, created_at, member_count, ` +
      "post_policy, add_policy, delivery, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) IF NOT EXISTS",
    insertFirstMember: `INSERT INTO ${members} (conversation_id, user_id, joined_at, since_seq) VALUES (?, ?, ?, 0) IF NOT EXISTS`,
    insertMember:
      `INSERT INTO ${members} (conversation_id, user_id, joined_at, since_seq) ` +
      `VALUES (?, ?, ?, ${UNBOUND}) IF NOT EXISTS`,
    memberSeqs: `SELECT user_id, joined_at, since_seq FROM ${members} WHERE conversation_id = ?`,
    boundMember:
      `UPDATE ${members} SET since_seq = ? WHERE conversation_id = ? AND user_id = ? ` +
      `IF since_seq = ${UNBOUND} AND joined_at = ?`,
    memberSeq: `SELECT joined_at, since_seq FROM ${members} WHERE conversation_id = ? AND user_id = ?`,
    insertDeparture:
      `INSERT INTO ${departures} (conversation_id, departed_at, user_id, joined_at, since_seq, until_seq) ` +
      `VALUES (?, ?, ?, ?, ?, ${UNBOUND})`,
    departures:
      `SELECT user_id, departed_at, joined_at, since_seq, until_seq FROM ${departures} ` +
      "WHERE conversation_id = ? AND departed_at >= ?",
    boundDeparture:
      `UPDATE ${departures} SET since_seq = ?, until_seq = ? ` +
      "WHERE conversation_id = ? AND departed_at = ? AND user_id = ? " +
      `IF since_seq = ${UNBOUND} AND until_seq = ${UNBOUND}`,
    boundDepartureStart:
      `UPDATE ${departures} SET since_seq = ? WHERE conversation_id = ? AND departed_at = ? AND user_id = ? ` +
      `IF since_seq = ${UNBOUND}`,
    boundDepartureEnd:
      `UPDATE ${departures} SET until_seq = ? WHERE conversation_id = ? AND departed_at = ? AND user_id = ? ` +
      `IF until_seq = ${UNBOUND}`,
    casCount: `UPDATE ${members} SET member_count = ? WHERE conversation_id = ? IF member_count = ?`,
    nextVersion: `UPDATE ${members} SET version = ? WHERE conversation_id = ? IF version = ?`,
    firstVersion: `UPDATE ${members} SET version = 1 WHERE conversation_id = ? IF version = null`,
    updateGroup:
      `UPDATE ${members} SET name = ?, open = ?, post_policy = ?, add_policy = ? ` +
      "WHERE conversation_id = ? IF kind = 'group'",
    setOwner: `UPDATE ${members} SET owner = ? WHERE conversation_id = ?`,
    setDelivery: `UPDATE ${members} SET delivery = ? WHERE conversation_id = ?`,
    setOwnerIf: `UPDATE ${members} SET owner = ? WHERE conversation_id = ? IF owner = ?`,
    setRoleIfMember: `UPDATE ${members} SET role = ? WHERE conversation_id = ? AND user_id = ? IF EXISTS`,
    deleteMember: `DELETE FROM ${members} WHERE conversation_id = ? AND user_id = ? IF EXISTS`,
    conversationsOf: `SELECT created_at, conversation_id FROM ${byUser} WHERE user_id = ?`,
    indexInsert: `INSERT INTO ${byUser} (user_id, created_at, conversation_id) VALUES (?, ?, ?)`,
    indexDelete: `DELETE FROM ${byUser} WHERE user_id = ? AND created_at = ? AND conversation_id = ?`,
  };
}
